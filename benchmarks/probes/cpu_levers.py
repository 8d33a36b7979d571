"""Levers for the fast TIGER training step on the CPU that were measured and not (or only partly) adopted.

Each variant trains its own copy of the same TIGER (paper size, Beauty, as ``cpu_speed.py``) on the same
``--batches`` length-bucketed batches, round after round, interleaved, so every variant sees the same machine
load. Samples/s per variant and the ratio to ``fast`` (the trainers' step: bf16 autocast with fp32 weights, the fused
AdamW of ``sidrec.utils.adamw``) go to the JSON.

- ``fast``: the reference.
- ``per_parameter_adamw``: torch's AdamW loop (~10 tensor ops per parameter) instead of the fused kernel.
- ``bf16_weights``: the model itself in bf16 (no autocast, no per-op casts; activations, residual stream and
  attention in bf16, RMSNorm still computed in fp32), fp32 master weights in the fused AdamW: gradients cast up
  and weights cast down once per step (the classic mixed-precision recipe with master weights).
- ``micro_batches_64``: each batch of 256 as 4 accumulated micro-batches of 64 (smaller working set per op).

Then the optimizer step alone: ms per ``step()`` of the fused and of the per-parameter AdamW on TIGER's parameters.

    PYTHONPATH=.:benchmarks python benchmarks/probes/cpu_levers.py --threads 2      # ~3 min on 2 cores
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import numpy as np
import torch
from cpu_speed import cpu_model, epoch_batches, load_problem, new_model, train_step

from sidrec.eval.evaluate import model_inputs
from sidrec.training.two_stage import LossModule
from sidrec.utils import adamw, atomic_write_json


def bf16_weights_step(cfg, item_sids, split, seed: int) -> Callable[[torch.Tensor], float]:
    """A step of a bf16 copy of the model whose fp32 master weights the fused AdamW updates."""
    master, _ = new_model(cfg, seed)
    work = copy.deepcopy(master).to(torch.bfloat16)
    opt = adamw(master.parameters(), lr=1e-3, weight_decay=0.035)
    masters, weights = list(master.parameters()), list(work.parameters())
    for p in masters:
        p.grad = torch.zeros_like(p)
    grads = [p.grad for p in masters]
    history, users, target = (torch.as_tensor(a) for a in (split.train.history, split.train.user, split.train.target))

    def step(idx: torch.Tensor) -> float:
        ids, mask = model_inputs(work, item_sids, history[idx], users[idx])
        loss = LossModule(work)(ids, mask, item_sids[target[idx]])  # logits are cast to fp32 for the loss
        for p in weights:
            p.grad = None
        loss.backward()
        torch._foreach_copy_(grads, [p.grad for p in weights])  # bf16 -> fp32
        torch.nn.utils.clip_grad_norm_(masters, 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_copy_(weights, masters)  # fp32 -> bf16
        return loss.item()

    return step


def micro_batch_step(cfg, item_sids, split, seed: int, size: int) -> Callable[[torch.Tensor], float]:
    """The fast step with the batch's gradient accumulated over micro-batches of ``size`` rows."""
    model, opt = new_model(cfg, seed)
    history, users, target = (torch.as_tensor(a) for a in (split.train.history, split.train.user, split.train.target))

    def step(idx: torch.Tensor) -> float:
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for part in idx.split(size):
            ids, mask = model_inputs(model, item_sids, history[part], users[part])
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = LossModule(model)(ids, mask, item_sids[target[part]]) * (len(part) / len(idx))
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return total

    return step


def optimizer_step_ms(cfg, seed: int, rounds: int = 5, steps: int = 20) -> dict[str, float]:
    """ms per ``opt.step()`` over TIGER's parameters (random gradients): fused vs per-parameter AdamW, interleaved."""
    opts = {}
    for name, fused in (("fused", True), ("per_parameter", False)):
        model, opt = new_model(cfg, seed, fused_adamw=fused)
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        opts[name] = opt
    seconds = dict.fromkeys(opts, 0.0)
    for _ in range(rounds):
        for name, opt in opts.items():
            opt.step()  # untimed first step of the round
            t0 = time.perf_counter()
            for _ in range(steps):
                opt.step()
            seconds[name] += time.perf_counter() - t0
    return {k: round(1000 * v / (rounds * steps), 2) for k, v in seconds.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=".sidrec/bench-decode", help="cache of the Beauty SIDs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, default=12, help="bucketed batches of 256 per variant and round")
    ap.add_argument("--rounds", type=int, default=5, help="the first is a warm-up and is not counted")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/cpu_levers.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg, item_sids, _, split = load_problem(args.work)
    bs = 256
    _, buckets, lengths = epoch_batches(split, bs, args.seed)
    batches = [buckets[s * bs : (s + 1) * bs] for s in range(1, args.batches + 1)]
    fast_model, fast_opt = new_model(cfg, args.seed)
    slow_model, slow_opt = new_model(cfg, args.seed, fused_adamw=False)
    variants = {
        "fast": lambda idx: train_step(fast_model, fast_opt, item_sids, split, idx, True, True),
        "per_parameter_adamw": lambda idx: train_step(slow_model, slow_opt, item_sids, split, idx, True, True),
        "bf16_weights": bf16_weights_step(cfg, item_sids, split, args.seed),
        "micro_batches_64": micro_batch_step(cfg, item_sids, split, args.seed, 64),
    }
    per_round: dict[str, list[float]] = {k: [] for k in variants}
    losses: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):
        for name, step in variants.items():
            t0 = time.perf_counter()
            losses[name] = [step(idx) for idx in batches]
            per_round[name].append(round(len(batches) * bs / (time.perf_counter() - t0), 1))
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]}" for k, v in per_round.items()), flush=True)
    counted = {k: v[1:] for k, v in per_round.items()}  # round 0 warms allocator and kernels up
    sps = {k: round(float(len(v) / np.sum(1 / np.array(v))), 1) for k, v in counted.items()}  # total samples / time
    ratio = {k: round(v / sps["fast"], 3) for k, v in sps.items()}
    print("samples/s:", sps, "\nratio to fast:", ratio)
    adamw_ms = optimizer_step_ms(cfg, args.seed)
    print("ms per AdamW step:", adamw_ms)
    atomic_write_json(args.out, {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_model(),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "command": "PYTHONPATH=.:benchmarks python benchmarks/probes/cpu_levers.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("work", "out")),
        "batch_size": bs, "batch_history_items": [int(lengths[b].max()) for b in batches],
        "samples_per_s_per_round": per_round, "samples_per_s": sps, "ratio_to_fast": ratio,
        "mean_loss_last_round": {k: round(float(np.mean(v)), 4) for k, v in losses.items()},
        "adamw_step_ms": adamw_ms,
    })


if __name__ == "__main__":
    main()
