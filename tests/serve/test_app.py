"""The HTTP API served for real by uvicorn on loopback, exercised with urllib: results, errors, auth, batching."""

import json
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

import pytest
import uvicorn

from sidrec.serve.app import create_app, is_loopback, serve
from sidrec.serve.service import Recommender

# Loopback only: never route the test traffic through a proxy from the environment.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@contextmanager
def running(app):
    """Serve ``app`` on 127.0.0.1 (a free port picked by the OS) in a background thread; yields the base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def call(url, body=None, headers=None):
    """(status, JSON answer) of a GET, or of a POST of ``body`` (sent as is if bytes, else as JSON)."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with OPENER.open(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def rec(tiny_run):
    """The served recommender, with every batched decode recorded in ``rec.decode_sizes``."""
    rec = Recommender.from_run(tiny_run, device="cpu")
    rec.decode_sizes = []
    batched = rec.recommend_batch

    def counting(histories, *args, **kwargs):
        rec.decode_sizes.append(len(histories))
        return batched(histories, *args, **kwargs)

    rec.recommend_batch = counting
    return rec


@pytest.fixture(scope="module")
def url(rec):
    with running(create_app(rec, max_history=20, max_k=15, max_batch=32, max_wait_ms=20)) as base:
        yield base


def test_health(url):
    status, body = call(f"{url}/health")
    assert status == 200
    assert body["status"] == "ok" and body["items"] == 40
    assert body["model"]["dataset"] == "toy" and len(body["model"]["sid_levels"]) >= 2


def test_recommend_excludes_history_sorted_with_titles(url, rec):
    status, body = call(f"{url}/recommend", {"history": ["i3", "i4"], "k": 5})
    assert status == 200
    items = body["items"]
    assert len(items) == 5
    assert not {"i3", "i4"} & {r["item"] for r in items}
    scores = [r["score"] for r in items]
    assert scores == sorted(scores, reverse=True)
    assert all(r["title"] == f"Movie {r['item'][1:]}" for r in items)
    expected = rec.recommend(["i3", "i4"], k=5)
    assert [r["item"] for r in items] == [r.item for r in expected]
    assert [r["sid"] for r in items] == [r.sid for r in expected]


def test_default_k_and_include_history(url, rec):
    status, body = call(f"{url}/recommend", {"history": ["i7"], "exclude_history": False})
    assert status == 200
    assert [r["item"] for r in body["items"]] == [r.item for r in rec.recommend(["i7"], 10, False)]


def test_batch(url, rec):
    requests = [{"history": ["i3", "i4"], "k": 3}, {"history": ["i20"], "k": 7, "exclude_history": False}]
    status, body = call(f"{url}/recommend/batch", {"requests": requests})
    assert status == 200
    assert [len(r["items"]) for r in body["results"]] == [3, 7]
    for r, got in zip(requests, body["results"]):
        expected = rec.recommend(r["history"], r["k"], r.get("exclude_history", True))
        assert [x["item"] for x in got["items"]] == [x.item for x in expected]


def test_item(url, rec):
    status, body = call(f"{url}/items/i3")
    assert status == 200
    assert body["item"] == "i3" and body["title"] == "Movie 3"
    assert body["sid"] == rec.item_sids[rec.item_indices(["i3"])[0]].tolist()
    assert "Movie 3" in body["text"].values()


def test_unknown_items_are_404_naming_them(url):
    status, body = call(f"{url}/items/nope")
    assert status == 404 and "'nope'" in body["detail"]
    status, body = call(f"{url}/recommend", {"history": ["i1", "nope", "gone"]})
    assert status == 404 and "'nope'" in body["detail"] and "'gone'" in body["detail"]
    assert "item keys look like 'i0', 'i1', 'i2' (40 items)" in body["detail"]


def test_an_unknown_item_fails_only_its_batch_entry(url, rec):
    requests = [{"history": ["i1"], "k": 3}, {"history": ["zz", "i2"]}, {"history": ["i5"], "k": 2}]
    status, body = call(f"{url}/recommend/batch", {"requests": requests})
    assert status == 200
    first, bad, last = body["results"]
    assert bad["items"] == [] and "'zz'" in bad["error"] and "item keys look like 'i0'" in bad["error"]
    assert first["error"] is None and [x["item"] for x in first["items"]] == [x.item for x in rec.recommend(["i1"], 3)]
    assert last["error"] is None and len(last["items"]) == 2
    status, body = call(f"{url}/recommend/batch", {"requests": [{"history": ["zz"]}]})
    assert status == 200 and body["results"][0]["items"] == [] and "'zz'" in body["results"][0]["error"]


@pytest.mark.parametrize(
    "path, body, status, words",
    [
        ("/recommend", {"history": []}, 422, "history"),
        ("/recommend", {"history": ["i1"] * 21}, 422, "history"),
        ("/recommend", {"history": ["i1"], "k": 0}, 422, "k"),
        ("/recommend", {"history": ["i1"], "k": 16}, 422, "k"),
        ("/recommend", {"history": "i1"}, 422, "history"),
        ("/recommend", {"history": ["i1"], "top_k": 5}, 422, "top_k"),
        ("/recommend", {}, 422, "history"),
        ("/recommend", b'{"history": ["i1"', 400, "JSON"),
        ("/recommend/batch", b"not json", 400, "JSON"),
        ("/recommend/batch", {"requests": []}, 422, "requests"),
        ("/recommend/batch", {"requests": [{"history": ["i1"]}] * 33}, 422, "requests"),
        ("/recommend/batch", {"requests": [{"history": ["i1"]}, {"history": ["i1"], "k": 0}]}, 422, "requests.1.k"),
    ],
)
def test_bad_requests_are_4xx_with_a_message(url, path, body, status, words):
    got, answer = call(f"{url}{path}", body)
    assert got == status
    assert words in answer["detail"]


def test_api_key(rec):
    with running(create_app(rec, api_key="s3cret")) as base:
        body = {"history": ["i3"], "k": 2}
        assert call(f"{base}/recommend", body)[0] == 401
        assert call(f"{base}/health", headers={"X-API-Key": "wrong"})[0] == 401
        assert call(f"{base}/health", headers={"X-API-Key": "s3crét"})[0] == 401
        status, answer = call(f"{base}/recommend", b"{", headers={"X-API-Key": "nope"})
        assert status == 401 and "X-API-Key" in answer["detail"]
        status, answer = call(f"{base}/recommend", body, headers={"X-API-Key": "s3cret"})
        assert status == 200 and len(answer["items"]) == 2


def test_create_app_checks_its_limits(rec):
    with pytest.raises(ValueError, match="api_key is empty"):
        create_app(rec, api_key="")
    with pytest.raises(ValueError, match="max_k must be >= 1"):
        create_app(rec, max_k=0)


def test_concurrent_requests_share_decodes(url, rec):
    histories = [[f"i{j}", f"i{(j + 1) % 40}"] for j in range(16)]
    results = [None] * len(histories)
    start = threading.Barrier(len(histories))

    def client(j):
        start.wait()
        results[j] = call(f"{url}/recommend", {"history": histories[j], "k": 4})

    before = len(rec.decode_sizes)
    threads = [threading.Thread(target=client, args=(j,)) for j in range(len(histories))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    decodes = rec.decode_sizes[before:]
    assert sum(decodes) == len(histories)
    assert len(decodes) < len(histories)
    for history, (status, body) in zip(histories, results):
        assert status == 200
        assert [r["item"] for r in body["items"]] == [r.item for r in rec.recommend(history, k=4)]


def test_serve_refuses_public_host_without_key(tiny_run, monkeypatch):
    with pytest.raises(ValueError, match="refusing to serve on 0.0.0.0 without an API key"):
        serve(tiny_run, host="0.0.0.0")
    monkeypatch.delenv("SIDREC_TEST_KEY", raising=False)
    with pytest.raises(ValueError, match="SIDREC_TEST_KEY is unset"):
        serve(tiny_run, host="0.0.0.0", api_key_env="SIDREC_TEST_KEY")


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True),
                                            ("localhost", True), ("0.0.0.0", False), ("::", False),
                                            ("192.168.1.5", False), ("example.com", False)])
def test_is_loopback(host, loopback):
    assert is_loopback(host) == loopback
