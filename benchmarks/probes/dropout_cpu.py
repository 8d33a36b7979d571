"""``sidrec.models.dropout.dropout`` against ``F.dropout`` on CPU, forward + backward, interleaved in one run.

The tensor is a TIGER feed-forward hidden layer at Beauty's mean bucketed length (256 x 27 x 1024), the largest
dropout of the training step, in fp32 and in bf16 (its dtype under autocast).

    PYTHONPATH=. python benchmarks/probes/dropout_cpu.py --threads 2      # ~20 s
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from sidrec.models.dropout import dropout
from sidrec.utils import atomic_write_json


def ms_forward_backward(paths: dict[str, Callable[[torch.Tensor], torch.Tensor]], shape: list[int],
                        dtype: torch.dtype, rounds: int, reps: int) -> dict[str, float]:
    """ms per forward + backward of each path on one random tensor, after a warm-up call, paths interleaved."""
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    grad = torch.randn(shape, dtype=dtype)
    seconds = dict.fromkeys(paths, 0.0)
    for fn in paths.values():  # warm-up
        torch.autograd.grad(fn(x), x, grad)
    for _ in range(rounds):
        for name, fn in paths.items():
            t0 = time.perf_counter()
            for _ in range(reps):
                torch.autograd.grad(fn(x), x, grad)
            seconds[name] += time.perf_counter() - t0
    return {n: round(s / (rounds * reps) * 1e3, 2) for n, s in seconds.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shape", type=int, nargs="+", default=[256, 27, 1024])
    ap.add_argument("--p", type=float, default=0.1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=10, help="calls per path and round")
    ap.add_argument("--out", default="benchmarks/results/dropout_cpu.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    paths = {"torch": lambda x: F.dropout(x, args.p, True), "sidrec": lambda x: dropout(x, args.p)}
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "shape": args.shape, "p": args.p, "ms_forward_backward": {}}
    for dtype in (torch.float32, torch.bfloat16):
        ms = ms_forward_backward(paths, args.shape, dtype, args.rounds, args.reps)
        ms["speedup"] = round(ms["torch"] / ms["sidrec"], 2)
        result["ms_forward_backward"][str(dtype).removeprefix("torch.")] = ms
        print(str(dtype), ms)
    print(json.dumps(result, indent=2))
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
