"""Load test of ``sidrec serve``: concurrent clients, latency percentiles, throughput, server memory, and hostile
traffic on the side (malformed JSON, oversized bodies, stalled and trickling sockets, requests without the key).

The server is the real CLI (``python -m sidrec serve RUN --api-key-env ...``) in its own process; the clients are
stdlib threads, each with one keep-alive ``http.client`` connection. Without ``--run-dir`` a run is first built on
MovieLens-100K (co-occurrence embeddings, RQ-VAE SIDs, a briefly trained TIGER: the catalogue and decoding cost
are real, the model quality is irrelevant here):

    PYTHONPATH=. python benchmarks/load_test.py                      # 32 clients, 20,000 requests
    PYTHONPATH=. python benchmarks/load_test.py --run-dir runs/ml-100k-demo --clients 8 --requests 2000

Writes ``benchmarks/results/load_test.json`` and prints it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KEY_ENV = "SIDREC_LOAD_TEST_KEY"


def build_run(run_dir: Path) -> None:
    """A quick ML-100K run (about 2 minutes on 2 CPU cores) to serve."""
    from sidrec.cli import main as cli
    from sidrec.data.loaders import data_root

    overrides = [
        f"data.path={data_root() / 'movielens-100k'}",
        "data.format=recbole",
        "embed.sources=[cooccurrence]",
        "train.epochs=1",
        "train.max_steps=60",
        "train.valid_users=200",
        "train.device=cpu",
        f"run_dir={run_dir}",
        f"cache_dir={run_dir.parent / 'cache'}",
    ]
    if cli(["run", "ml-100k-demo", *overrides, "--quiet"]) != 0:
        raise SystemExit("building the run failed")


def rss_kb(pid: int) -> dict[str, int]:
    """Current and peak resident memory of ``pid`` (Linux /proc), in kB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def request(
    conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None, headers: dict[str, str]
) -> int:
    conn.request(method, path, body, headers)
    resp = conn.getresponse()
    resp.read()
    return resp.status


def clients(port: int, n_clients: int, total: int, keys: list[str], key: str) -> tuple[list[float], list]:
    """Send ``total`` POST /recommend from ``n_clients`` threads; returns latencies (s) and failures."""
    latencies: list[float] = []
    failures: list = []
    lock = threading.Lock()
    per_client = [total // n_clients + (c < total % n_clients) for c in range(n_clients)]

    def client(c: int) -> None:
        rng = random.Random(c)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine, bad = [], []
        headers = {"Content-Type": "application/json", "X-API-Key": key}
        for _ in range(per_client[c]):
            body = json.dumps({"history": rng.sample(keys, rng.randint(1, 20)), "k": 10}).encode()
            t0 = time.perf_counter()
            try:
                status = request(conn, "POST", "/recommend", body, headers)
            except (OSError, http.client.HTTPException) as e:
                bad.append(repr(e))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                continue
            mine.append(time.perf_counter() - t0)
            if status != 200:
                bad.append(status)
        conn.close()
        with lock:
            latencies.extend(mine)
            failures.extend(bad)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, failures


def hostile(port: int, key: str, stop: threading.Event, counts: dict[str, dict[int, int]]) -> None:
    """Side traffic while the load runs: every answer's status is counted per kind of abuse."""
    stalled = []
    for i in range(16):  # sockets that never finish their request, held for the whole run
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(
            b"POST /recommend HTTP/1.1\r\nHost: x\r\n"
            if i % 2
            else b'POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Length: 900\r\n\r\n{"hist'
        )
        stalled.append(s)
    trickle = socket.create_connection(("127.0.0.1", port), timeout=30)
    slow_bytes = iter(b"POST /recommend HTTP/1.1\r\nHost: x\r\n" * 1000)
    cases = {
        "malformed_json": (b'{"history": ["1"', {"X-API-Key": key}),
        "oversized_body": (b'{"history": [' + b'"1",' * 400_000 + b'"1"]}', {"X-API-Key": key}),
        "no_api_key": (json.dumps({"history": ["1"]}).encode(), {}),
        "wrong_api_key": (json.dumps({"history": ["1"]}).encode(), {"X-API-Key": key + "x"}),
    }
    try:
        while not stop.is_set():
            for name, (body, headers) in cases.items():
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                try:
                    status = request(
                        conn, "POST", "/recommend", body, {"Content-Type": "application/json", **headers}
                    )
                except (OSError, http.client.HTTPException):
                    status = -1  # the server closed the connection on us (e.g. mid-way through a huge body)
                finally:
                    conn.close()
                counts[name][status] = counts[name].get(status, 0) + 1
            trickle.send(bytes([next(slow_bytes)]))  # one byte per round: a very slow client
            time.sleep(0.05)
    finally:
        for s in [*stalled, trickle]:
            s.close()


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q / 100 * len(sorted_values)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", type=Path, help="a finished run to serve (default: build one on ML-100K)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--bf16", action="store_true", help="serve with --bf16")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "load_test.json")
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)

    run_dir = args.run_dir
    if run_dir is None:
        run_dir = REPO / "runs" / "load-test" / "run"
        if not (run_dir / "model" / "model.json").exists():
            build_run(run_dir)
    keys = json.loads((run_dir / "data" / "items.json").read_text())["item_keys"]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    key = "load-test-" + os.urandom(8).hex()
    env = {
        **os.environ,
        KEY_ENV: key,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    (REPO / "runs" / "load-test").mkdir(parents=True, exist_ok=True)
    log = open(REPO / "runs" / "load-test" / "server.log", "w")  # uvicorn's access log: a line per request
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sidrec",
            "serve",
            str(run_dir),
            "--port",
            str(port),
            "--api-key-env",
            KEY_ENV,
            *(["--bf16"] if args.bf16 else []),
        ],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                if request(conn, "GET", "/health", None, {"X-API-Key": key}) == 200:
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.2)
        clients(port, 1, 20, keys, key)  # warm-up
        rss_before = rss_kb(server.pid)

        counts: dict[str, dict[int, int]] = {
            n: {} for n in ("malformed_json", "oversized_body", "no_api_key", "wrong_api_key")
        }
        stop = threading.Event()
        side = threading.Thread(target=hostile, args=(port, key, stop, counts))
        side.start()
        t0 = time.perf_counter()
        latencies, failures = clients(port, args.clients, args.requests, keys, key)
        wall = time.perf_counter() - t0
        stop.set()
        side.join()
        alive = server.poll() is None
        rss_after = rss_kb(server.pid)
        health = request(
            http.client.HTTPConnection("127.0.0.1", port, timeout=10),
            "GET",
            "/health",
            None,
            {"X-API-Key": key},
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()

    lat = sorted(latencies)
    result = {
        "command": "PYTHONPATH=. python benchmarks/load_test.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} (server on CPU)",
        "run_dir": str(run_dir),
        "items": len(keys),
        "clients": args.clients,
        "requests": args.requests,
        "bf16": args.bf16,
        "ok": len(latencies) - sum(isinstance(f, int) for f in failures),
        "errors": len(failures),
        "error_examples": [str(f) for f in failures[:5]],
        "wall_seconds": round(wall, 2),
        "throughput_rps": round(len(latencies) / wall, 1),
        "latency_ms": {f"p{q}": round(1000 * percentile(lat, q), 2) for q in (50, 90, 99)}
        | {"max": round(1000 * lat[-1], 2)},
        "server_rss_kb": {
            "before": rss_before["VmRSS"],
            "after": rss_after["VmRSS"],
            "peak": rss_after["VmHWM"],
        },
        "hostile_side_traffic_status_counts": counts,
        "server_alive_after": alive,
        "health_after": health,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["errors"] == 0 and alive and health == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
