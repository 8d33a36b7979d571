"""Peak memory and time of ``balanced_kmeans`` (its capacity-constrained assignment) on N clustered points.

N points x ``--dim`` float32 around sqrt(N) Gaussian cluster centres (as ``benchmarks/scale.py``), then
``balanced_kmeans(x, K, iters)`` from seed 0. Memory is the process RSS sampled every 10 ms: ``peak_rss_mb``
during the call and ``delta_rss_mb``, that minus the RSS before it (the input is already allocated, and a tiny
warm-up call has loaded the libraries). ``digest`` is a SHA-256 of the returned centroids and assignment, so
runs of two versions of sidrec can be checked for identical results:

    PYTHONPATH=.:benchmarks nice -n 10 python benchmarks/probes/balanced_memory.py --n 200000 --k 256 --dim 64
    PYTHONPATH=/path/to/older/checkout:benchmarks nice -n 10 python benchmarks/probes/balanced_memory.py --n 200000 --k 256 --dim 64
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import time

import torch
from scale import RssSampler, rss_bytes  # benchmarks/scale.py (benchmarks/ is on PYTHONPATH)

import sidrec
from sidrec.tokenizers.kmeans import balanced_kmeans


def clustered_points(n: int, dim: int, seed: int) -> torch.Tensor:
    """(n, dim) float32 around max(16, sqrt(n)) seeded Gaussian centres."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(max(16, int(n**0.5)), dim, generator=gen)
    which = torch.randint(len(centres), (n,), generator=gen)
    return centres[which] + 0.3 * torch.randn(n, dim, generator=gen)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--iters", type=int, default=2, help="Lloyd iterations (each one assignment)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    x = clustered_points(args.n, args.dim, args.seed)
    balanced_kmeans(x[:1000], 8, 1, torch.Generator().manual_seed(0))  # warm-up: libraries and thread pools
    start = rss_bytes()
    t0 = time.perf_counter()
    with RssSampler() as sampler:
        centroids, assign = balanced_kmeans(x, args.k, args.iters, torch.Generator().manual_seed(args.seed))
    seconds = time.perf_counter() - t0
    digest = hashlib.sha256(centroids.numpy().tobytes() + assign.numpy().tobytes()).hexdigest()[:16]
    print(json.dumps({
        "sidrec": os.path.dirname(sidrec.__file__), "n": args.n, "k": args.k, "dim": args.dim, "iters": args.iters,
        "seconds": round(seconds, 2), "peak_rss_mb": round(sampler.peak / 2**20, 1),
        "delta_rss_mb": round((sampler.peak - start) / 2**20, 1), "input_mb": round(x.nbytes / 2**20, 1),
        "digest": digest, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }))


if __name__ == "__main__":
    main()
