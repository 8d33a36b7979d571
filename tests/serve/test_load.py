"""The server under (bounded) load and under hostile clients: no errors, no crash, auth still enforced.

The full benchmark (32 clients, 20,000 requests, latency percentiles, memory) is ``benchmarks/load_test.py``.
"""

import http.client
import json
import random
import socket
import threading
import time
from urllib.parse import urlparse

import pytest
from test_app import running

from sidrec.serve.app import create_app
from sidrec.serve.service import Recommender


def hammer(base: str, clients: int, per_client: int, keys: list[str], headers: dict | None = None) -> list:
    """``clients`` threads, each sending ``per_client`` POST /recommend on one keep-alive connection.

    Returns one ``(status, body or exception text)`` per request.
    """
    host, port = urlparse(base).hostname, urlparse(base).port
    results: list = []
    lock = threading.Lock()

    def client(c: int) -> None:
        rng = random.Random(c)
        conn = http.client.HTTPConnection(host, port, timeout=60)
        out = []
        for _ in range(per_client):
            body = json.dumps({"history": rng.sample(keys, rng.randint(1, 5)), "k": 5})
            try:
                conn.request(
                    "POST", "/recommend", body, {"Content-Type": "application/json", **(headers or {})}
                )
                resp = conn.getresponse()
                out.append((resp.status, json.loads(resp.read())))
            except (OSError, http.client.HTTPException, ValueError) as e:
                out.append((None, repr(e)))
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=60)
        conn.close()
        with lock:
            results.extend(out)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    return results


@pytest.fixture(scope="module")
def rec(tiny_run):
    return Recommender.from_run(tiny_run, device="cpu")


@pytest.fixture(scope="module")
def url(rec):
    with running(create_app(rec, max_wait_ms=2, max_body_bytes=64 * 1024)) as base:
        yield base


def test_8_clients_x_250_requests_zero_errors(url, rec):
    keys = list(rec.dataset.item_keys)
    results = hammer(url, clients=8, per_client=250, keys=keys)
    assert len(results) == 2000
    errors = [r for r in results if r[0] != 200]
    assert errors == []
    assert all(len(body["items"]) == 5 for _, body in results)


def _raw(url: str, payload: bytes, read: bool = True, timeout: float = 10) -> bytes:
    parsed = urlparse(url)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=timeout) as s:
        s.sendall(payload)
        return s.recv(65536) if read else b""


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def test_oversized_chunked_and_garbage_requests_are_refused(url):
    head = b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    # A declared 10 MB body is refused from its headers, before a byte of it is sent.
    assert _status(_raw(url, head + b"Content-Length: 10000000\r\n\r\n")) == 413
    big = json.dumps({"history": ["i1"] * 20_000}).encode()  # ~120 kB, really sent
    assert _status(_raw(url, head + f"Content-Length: {len(big)}\r\n\r\n".encode() + big)) == 413
    assert _status(_raw(url, head + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")) == 411
    assert _status(_raw(url, head + b'Content-Length: 12\r\n\r\n{"history": ')) == 400
    assert _status(_raw(url, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)))) == 400
    assert _status(_raw(url, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")) == 200


def test_slow_and_stalled_clients_do_not_block_others(url, rec):
    parsed = urlparse(url)
    stalled = []
    for i in range(20):  # half-sent headers, or headers with a body that never arrives
        s = socket.create_connection((parsed.hostname, parsed.port), timeout=10)
        s.sendall(
            b"POST /recommend HTTP/1.1\r\nHost: x\r\n"
            if i % 2
            else b'POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{"hist'
        )
        stalled.append(s)
    trickle = socket.create_connection((parsed.hostname, parsed.port), timeout=10)
    try:
        start = time.monotonic()
        for byte in b"POST /recommend HTTP/1.1\r\nHost: x\r\n"[:10]:  # a client sending a byte at a time
            trickle.send(bytes([byte]))
        results = hammer(url, clients=4, per_client=25, keys=list(rec.dataset.item_keys))
        assert [r for r in results if r[0] != 200] == []
        assert time.monotonic() - start < 60
    finally:
        for s in [*stalled, trickle]:
            s.close()
    assert _status(_raw(url, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")) == 200


def test_api_key_enforced_under_load(rec):
    with running(create_app(rec, api_key="k3y", max_wait_ms=2)) as base:
        keys = list(rec.dataset.item_keys)
        without = hammer(base, clients=4, per_client=25, keys=keys)
        wrong = hammer(base, clients=2, per_client=25, keys=keys, headers={"X-API-Key": "k3x"})
        right = hammer(base, clients=4, per_client=25, keys=keys, headers={"X-API-Key": "k3y"})
    assert {s for s, _ in without} == {401} and {s for s, _ in wrong} == {401}
    assert {s for s, _ in right} == {200}
