"""Training throughput of the fast path against the code as it was before it (issue 15's "today"), run for real.

``cpu_speed.py`` measures its simple path with today's model code (``nn.Dropout`` swapped in, padded random
batches, fp32, per-parameter AdamW). This script also runs the training step of the commit before the fast path
(``--old-commit``, default e47b05d: SDPA attention with its own dropout in training, ``nn.Dropout``, padded batches,
bf16 only on CUDA) from a git worktree of that commit. Each path runs in its own process (two versions of
``sidrec`` cannot share one), one after the other in every round, on the same problem: Amazon Beauty's training
prefixes with the RQ-KMeans SIDs of ``cpu_speed.py`` and a TIGER of the paper's size from the same seed.

- ``old``: the old commit's step (``model_inputs`` -> ``model.loss`` -> AdamW), random batches.
- ``simple``: ``cpu_speed.py``'s simple path (this commit), the same random batches.
- ``fast``: ``cpu_speed.py``'s fast path (this commit), length-bucketed batches.

    PYTHONPATH=.:benchmarks python benchmarks/probes/train_vs_old.py --threads 2       # ~8 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]


def export_problem(work: str, seed: int, path: Path) -> None:
    """The SIDs, training arrays, model dims and both epoch orders, for workers of either commit."""
    from cpu_speed import epoch_batches, load_problem

    cfg, item_sids, _, split = load_problem(work)
    order, buckets, _ = epoch_batches(split, 256, seed)
    np.savez(path, item_sids=item_sids.numpy(), history=split.train.history, user=split.train.user,
             target=split.train.target, order=order.numpy(), buckets=buckets.numpy())
    dims = {k: getattr(cfg, k) for k in ("level_sizes", "d_model", "num_heads", "d_kv", "d_ff", "num_encoder_layers",
                                         "num_decoder_layers", "dropout", "user_buckets", "max_history")}
    path.with_suffix(".json").write_text(json.dumps({"dims": dims, "work": work}))


def worker(path: str, name: str, first: int, steps: int, seed: int) -> None:
    """Time ``steps`` steps of path ``name`` from batch ``first`` (after untimed ones); print samples/s."""
    data = np.load(path)
    meta = json.loads(Path(path).with_suffix(".json").read_text())
    item_sids = torch.as_tensor(data["item_sids"])
    hist, users, target = (torch.as_tensor(data[k]) for k in ("history", "user", "target"))
    bs = 256
    if name == "old":  # only names that the old commit has
        from sidrec.eval.evaluate import model_inputs
        from sidrec.models.tiger import Tiger, TigerConfig

        model = Tiger(TigerConfig(**meta["dims"]), generator=torch.Generator().manual_seed(seed)).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.035)
        order = torch.as_tensor(data["order"])

        def step(idx: torch.Tensor) -> None:  # the old loop's body for one process, fp32 on the CPU
            ids, mask = model_inputs(model, item_sids, hist[idx], users[idx])
            loss = model.loss(ids, mask, item_sids[target[idx]])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    else:
        from cpu_speed import new_model, train_step

        from sidrec.models.tiger import TigerConfig

        fast = name == "fast"
        model, opt = new_model(TigerConfig(**meta["dims"]), seed, torch_dropout=not fast, fused_adamw=fast)
        order = torch.as_tensor(data["buckets" if fast else "order"])
        split = SimpleNamespace(train=SimpleNamespace(history=data["history"], user=data["user"],
                                                      target=data["target"]))  # what train_step reads

        def step(idx: torch.Tensor) -> None:
            train_step(model, opt, item_sids, split, idx, fast, fast)

    batches = [order[s * bs : (s + 1) * bs] for s in range(first, first + steps)]
    # Untimed warm-up (allocator, oneDNN kernels of every batch shape): the padded paths have one shape, the fast
    # path one per history length, so it first runs the very batches it is timed on.
    for idx in batches if name == "fast" else batches[:1]:
        step(idx)
    t0 = time.perf_counter()
    for idx in batches:
        step(idx)
    print(json.dumps({"samples_per_s": steps * bs / (time.perf_counter() - t0)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=".sidrec/bench-decode", help="cache of the Beauty SIDs")
    ap.add_argument("--old-commit", default="e47b05d")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per path and round (old, simple)")
    ap.add_argument("--fast-steps", type=int, default=24, help="timed steps per round of the fast path")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/train_vs_old.json")
    ap.add_argument("--worker", nargs=4, metavar=("PROBLEM", "PATH", "FIRST", "STEPS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        problem, name, first, steps = args.worker
        return worker(problem, name, int(first), int(steps), args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(old), args.old_commit],
                       check=True, capture_output=True)
        try:
            problem = Path(tmp) / "problem.npz"
            export_problem(args.work, args.seed, problem)
            rates: dict[str, list[float]] = {"old": [], "simple": [], "fast": []}
            for r in range(args.rounds):
                for name in rates:
                    steps = args.fast_steps if name == "fast" else args.steps
                    root = old if name == "old" else REPO
                    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{REPO / 'benchmarks'}"}
                    out = subprocess.run(
                        [sys.executable, __file__, "--threads", str(args.threads), "--seed", str(args.seed),
                         "--worker", str(problem), name, str(1 + r * steps), str(steps)],
                        env=env, cwd=REPO, check=True, capture_output=True, text=True)
                    rates[name].append(round(json.loads(out.stdout.strip().splitlines()[-1])["samples_per_s"], 1))
                print(f"round {r}: " + ", ".join(f"{k} {v[-1]}" for k, v in rates.items()), flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)], check=False)
    mean = {k: round(float(len(v) / np.sum(1 / np.array(v))), 1) for k, v in rates.items()}
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "threads": args.threads,
        "torch": torch.__version__, "old_commit": args.old_commit,
        "command": "PYTHONPATH=.:benchmarks python benchmarks/probes/train_vs_old.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("work", "out", "worker")),
        "samples_per_s_per_round": rates, "samples_per_s": mean,
        "fast_over_old": round(mean["fast"] / mean["old"], 2),
        "fast_over_simple": round(mean["fast"] / mean["simple"], 2),
        "simple_over_old": round(mean["simple"] / mean["old"], 2),
    }
    print(json.dumps(result, indent=1))
    # imported here: the workers of the old commit must not import this commit's sidrec
    from sidrec.utils import atomic_write_json


    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
