"""Scale: time and peak memory of each stage on synthetic catalogues of 10k / 100k / 1M items.

Per size N (each in a fresh subprocess, so peak memory is not inherited from a smaller size):

    data       N items x 384-d float32 embeddings (seeded Gaussian clusters, so k-means has structure to find)
               and 10 N interactions (N users walking near-by items, 10 on average), then the leave-one-out split
    rqkmeans   fit 3 x 256 residual k-means (``--kmeans-iters`` Lloyd iterations per level)
    rqvae      fit RQ-VAE 3 x 256 for ``--rqvae-epochs`` epochs (a few: this measures cost, not quality)
    sids       semantic IDs (codes + dedup token) of all N items with each tokenizer
    trie       SidTrie over the first tokenizer's SIDs; its tensors' bytes must grow linearly in N
    decode     trie-constrained beam search (20 beams, top 10) for ``--users`` test users with a random small
               TIGER (d_model 64, 2 + 2 layers)

Memory is the process RSS sampled every 10 ms (``/proc/self/statm``, Linux): ``peak_rss_mb`` the highest value
during the stage, ``delta_rss_mb`` that minus the RSS when the stage started (what the stage itself added).

    PYTHONPATH=. nice -n 10 python benchmarks/scale.py --sizes 10000 100000 [1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from sidrec.data.dataset import Dataset
from sidrec.data.splits import leave_one_out
from sidrec.decoding.beam import constrained_beam_search
from sidrec.decoding.trie import SidTrie
from sidrec.eval.evaluate import model_inputs
from sidrec.models.tiger import Tiger, TigerConfig
from sidrec.tokenizers import build_tokenizer
from sidrec.utils import atomic_write_json

DIM = 384
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class RssSampler:
    """Highest RSS seen by a background thread polling every ``interval`` seconds."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


@contextmanager
def stage(report: dict, name: str) -> Iterator[dict]:
    """Time the body and record its peak RSS into ``report[name]`` (the body may add more keys)."""
    rec: dict = {}
    start_rss = rss_bytes()
    t0 = time.perf_counter()
    with RssSampler() as sampler:
        yield rec
    rec.update(seconds=round(time.perf_counter() - t0, 2), peak_rss_mb=round(sampler.peak / 2**20, 1),
               delta_rss_mb=round((sampler.peak - start_rss) / 2**20, 1))
    report[name] = rec
    print(f"  {name:9s} {json.dumps(rec)}", flush=True)


def synthetic_catalogue(n: int, seed: int) -> np.ndarray:
    """(n, 384) float32: items in contiguous runs around sqrt(n) Gaussian cluster centres."""
    rng = np.random.default_rng(seed)
    clusters = max(16, int(np.sqrt(n)))
    centres = rng.standard_normal((clusters, DIM), dtype=np.float32)
    which = np.sort(rng.integers(0, clusters, n))  # contiguous item runs per cluster: walks stay near a topic
    emb = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 100_000):  # chunks bound the temporaries
        part = which[start : start + 100_000]
        emb[start : start + len(part)] = centres[part] + 0.3 * rng.standard_normal((len(part), DIM), np.float32)
    return emb


def synthetic_interactions(n: int, seed: int) -> Dataset:
    """n users, 10 n interactions: each user walks forward over near-by items (lengths 5..15, mean 10)."""
    rng = np.random.default_rng(seed + 1)
    lengths = rng.integers(5, 16, n)
    steps = rng.integers(1, 20, lengths.sum())
    starts = np.repeat(rng.integers(0, n, n), lengths)
    first = np.cumsum(lengths) - lengths  # (n,) offset of each user's first interaction
    walk = np.cumsum(steps) - np.repeat(np.cumsum(steps)[first], lengths)  # restart the sum per user
    items = (starts + walk) % n
    sequences = np.split(items.astype(np.int64), np.cumsum(lengths)[:-1])
    return Dataset("synthetic", [str(i) for i in range(n)], [str(u) for u in range(n)], sequences)


def run_size(n: int, args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    report: dict = {"items": n}
    with stage(report, "data") as rec:
        emb = torch.from_numpy(synthetic_catalogue(n, args.seed))
        ds = synthetic_interactions(n, args.seed)
        split = leave_one_out(ds, max_history=20)
        rec.update(interactions=int(sum(len(s) for s in ds.sequences)), embeddings_mb=round(emb.nbytes / 2**20, 1))
    params = {"rqkmeans": {"num_levels": 3, "codebook_size": 256, "iters": args.kmeans_iters},
              "rqvae": {"num_levels": 3, "codebook_size": 256, "epochs": args.rqvae_epochs}}
    sids = {}
    for name in args.tokenizers:
        with stage(report, name):
            tok = build_tokenizer(name, params[name], DIM).fit(emb, seed=args.seed, device="cpu", progress=False)
        with stage(report, f"sids.{name}") as rec:
            with torch.no_grad():
                sids[name] = tok.semantic_ids(emb)
            rec.update(max_dedup=int(sids[name][:, -1].max()))
    item_sids = sids[args.tokenizers[0]]
    sizes = [256, 256, 256, int(item_sids[:, -1].max()) + 1]
    with stage(report, "trie") as rec:
        trie = SidTrie(item_sids, sizes)
        rec.update(trie_bytes=trie.nbytes, trie_bytes_per_item=round(trie.nbytes / n, 2))
    cfg = TigerConfig(level_sizes=sizes, d_model=64, num_heads=4, d_kv=16, d_ff=256, num_encoder_layers=2,
                      num_decoder_layers=2, dropout=0.0, user_buckets=0)
    model = Tiger(cfg, generator=torch.Generator().manual_seed(args.seed)).eval()
    test = split.test.subset(np.arange(min(args.users, len(split.test))))
    ids, mask = model_inputs(model, item_sids, torch.as_tensor(test.history), torch.as_tensor(test.user))
    with stage(report, "decode") as rec:
        res = constrained_beam_search(model, ids, mask, trie, beam_size=20, topk=10)
        rec.update(users=len(test), found_per_user=round(float((res.items >= 0).sum(1).float().mean()), 2))
    report["decode"]["users_per_s"] = round(len(test) / report["decode"]["seconds"], 1)
    report["peak_rss_mb"] = round(max(r["peak_rss_mb"] for r in report.values() if isinstance(r, dict)), 1)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--kmeans-iters", type=int, default=10)
    ap.add_argument("--rqvae-epochs", type=int, default=2)
    ap.add_argument("--users", type=int, default=256, help="users decoded at each size")
    ap.add_argument("--tokenizers", nargs="+", choices=["rqkmeans", "rqvae"], default=["rqkmeans", "rqvae"],
                    help="tokenizers fitted; the trie and decoding use the first one's SIDs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/scale_cpu.json")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # internal: run one size, print JSON
    args = ap.parse_args()
    if args.one is not None:
        print("RESULT " + json.dumps(run_size(args.one, args)), flush=True)
        return
    results = []
    for n in args.sizes:
        print(f"N = {n:,}", flush=True)
        cmd = [sys.executable, __file__, "--one", str(n), "--kmeans-iters", str(args.kmeans_iters),
               "--rqvae-epochs", str(args.rqvae_epochs), "--users", str(args.users), "--seed", str(args.seed), "--tokenizers", *args.tokenizers]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
        print(proc.stdout, end="")
        results.append(json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[7:]))
    summary = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "kmeans_iters": args.kmeans_iters,
               "rqvae_epochs": args.rqvae_epochs, "tokenizers": args.tokenizers, "sizes": results}
    atomic_write_json(args.out, summary)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
