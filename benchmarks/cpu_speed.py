"""CPU speed of TIGER training and decoding: the simple path against the fast path, measured in the same run.

Simple path (as before the fast path): random batches of every training prefix, each padded to ``max_history``
items, fp32, torch's ``nn.Dropout`` (swapped in for ``sidrec.models.dropout.Dropout``), torch's per-parameter AdamW;
decoding in dataset order, batch 512, padded, fp32. Fast path (the defaults now): length-bucketed batches trimmed
to their longest history (``train.length_buckets``), our cheaper dropout mask, bf16 autocast on a CPU with native bf16 (AMX or AVX512-BF16)
(``train.bf16`` / ``eval.bf16``), the fused AdamW (``sidrec.utils.adamw``); decoding batches sorted by history
length and trimmed.

Problem: Amazon Beauty (22,363 users, 131,413 training prefixes) with RQ-KMeans SIDs (3 x 256 + dedup) of
co-occurrence embeddings (cached in ``--work``), and a TIGER of the paper's size (4 + 4 layers, d_model 128, 6 x 64
heads, FFN 1024, dropout 0.1, 2000 user buckets) with random weights: speed does not depend on the weights.

Training: both paths start from the same weights and warm up untimed (the fast path on one batch of each history
length it will meet); ``--rounds`` rounds of ``--steps`` steps of each path, interleaved (the machine is shared:
both see the same load), give samples/s of each and their ratio. Dropout: the fast step with our mask, with
``nn.Dropout`` and without dropout, interleaved the same way. Then the bf16 loss curve against fp32: two copies of
one model on the same bucketed batches for ``--curve-steps`` steps.
Decoding: ``--decode-users`` test users by both paths (timed; the fast path also in fp32, which must give the
simple path's lists exactly; the bf16 agreement is reported), then every test user by the fast path
(``decode.beauty_test_seconds``).

    PYTHONPATH=. python benchmarks/cpu_speed.py --threads 2        # ~10-15 min on 2 cores
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from decode_vs_hf import beauty_problem  # benchmarks/ is the script's folder

from sidrec.data.splits import leave_one_out
from sidrec.decoding.beam import constrained_beam_search
from sidrec.decoding.trie import SidTrie
from sidrec.eval.evaluate import generate_rankings, history_sids, model_inputs
from sidrec.models.dropout import Dropout
from sidrec.models.tiger import Tiger, TigerConfig
from sidrec.training.loop import bucket_by_length, epoch_order
from sidrec.training.two_stage import LossModule
from sidrec.utils import adamw, atomic_write_json, bf16_autocast, cpu_bf16_isa


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def load_problem(work: str):
    ds, sids, sizes, cfg = beauty_problem(work)  # the preset's dropout (0.1) stays: training pays for it
    return cfg, torch.as_tensor(sids), sizes, leave_one_out(ds, cfg.max_history)


def new_model(cfg: TigerConfig, seed: int, torch_dropout: bool = False,
              fused_adamw: bool = True) -> tuple[Tiger, torch.optim.Optimizer]:
    """A TIGER and its AdamW. The old path: ``torch_dropout`` swaps our dropout for ``nn.Dropout`` (torch's mask),
    ``fused_adamw=False`` gives torch's per-parameter AdamW instead of the trainers' ``sidrec.utils.adamw``."""
    model = Tiger(cfg, generator=torch.Generator().manual_seed(seed)).train()
    if torch_dropout:
        for module in list(model.modules()):
            for name, child in module.named_children():
                if isinstance(child, Dropout):
                    setattr(module, name, torch.nn.Dropout(child.p))
    if fused_adamw:
        return model, adamw(model.parameters(), lr=1e-3, weight_decay=0.035)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.035)


def epoch_batches(split, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(random order, length-bucketed order, history lengths) of every training prefix, as the loop makes them."""
    order = epoch_order(split.train.user, 0, torch.Generator().manual_seed(seed))
    lengths = torch.as_tensor((split.train.history >= 0).sum(1))
    return order, bucket_by_length(order, lengths, batch_size, torch.Generator().manual_seed(seed)), lengths


def train_step(model, opt, item_sids, split, idx: torch.Tensor, fast: bool, bf16: bool) -> float:
    """One step of the training loop's body: simple = padded inputs, fast = trimmed (``model_inputs``)."""
    hist, users = torch.as_tensor(split.train.history)[idx], torch.as_tensor(split.train.user)[idx]
    if fast:
        ids, mask = model_inputs(model, item_sids, hist, users)
    else:
        ids, mask = model.encoder_inputs(history_sids(item_sids, hist), users)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = LossModule(model)(ids, mask, item_sids[torch.as_tensor(split.train.target)[idx]])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


def bench_train(args, cfg, item_sids, split, use_bf16: bool) -> dict:
    bs = args.batch_size
    order, buckets, lengths = epoch_batches(split, bs, args.seed)
    paths = {"simple": new_model(cfg, args.seed, torch_dropout=True, fused_adamw=False),
             "fast": new_model(cfg, args.seed)}
    seconds, samples, losses = {"simple": 0.0, "fast": 0.0}, {"simple": 0, "fast": 0}, {"simple": [], "fast": []}
    # Untimed warm-up (allocator, oneDNN kernels): the simple path has one batch shape, the fast path one per history
    # length, each built once per process (an epoch's 500+ steps amortise that), so it warms up on one timed batch
    # of every length it will meet.
    timed = [buckets[s * bs : (s + 1) * bs] for s in range(1, 1 + args.rounds * args.steps)]
    per_length = {int(lengths[idx].max()): idx for idx in timed}
    train_step(*paths["simple"], item_sids, split, order[:bs], False, False)
    for idx in [buckets[:bs], *per_length.values()]:
        train_step(*paths["fast"], item_sids, split, idx, True, use_bf16)
    step = 1
    for r in range(args.rounds):
        for name, (model, opt) in paths.items():  # interleaved: both paths see the same machine load
            batches = buckets if name == "fast" else order
            t0 = time.perf_counter()
            for s in range(step, step + args.steps):
                idx = batches[s * bs : (s + 1) * bs]
                losses[name].append(train_step(model, opt, item_sids, split, idx, name == "fast",
                                               use_bf16 and name == "fast"))
                samples[name] += len(idx)
            seconds[name] += time.perf_counter() - t0
        step += args.steps
        print(f"train round {r}: " + ", ".join(f"{n} {samples[n] / seconds[n]:.1f} samples/s" for n in paths))
    sps = {n: samples[n] / seconds[n] for n in paths}
    return {"batch_size": bs, "steps_per_path": args.rounds * args.steps,
            "simple_samples_per_s": round(sps["simple"], 1), "fast_samples_per_s": round(sps["fast"], 1),
            "speedup": round(sps["fast"] / sps["simple"], 2),
            "mean_tokens_per_row": {"simple": 1 + cfg.max_history * len(cfg.level_sizes),
                                    "fast": round(float(np.mean([
                                        1 + int(lengths[buckets[s * bs:(s + 1) * bs]].max()) * len(cfg.level_sizes)
                                        for s in range(1, step)])), 1)},
            "epoch_minutes_fast": round(len(split.train.target) / sps["fast"] / 60, 1)}


def profile_fast_step(args, cfg, item_sids, split, use_bf16: bool) -> dict:
    """Share of CPU time per op over ``--profile`` fast steps (after two untimed ones): where the step goes."""
    from torch.profiler import ProfilerActivity, profile

    bs = args.batch_size
    _, buckets, _ = epoch_batches(split, bs, args.seed)
    model, opt = new_model(cfg, args.seed)
    batches = [buckets[s * bs : (s + 1) * bs] for s in range(args.profile + 2)]
    for idx in batches[:2]:
        train_step(model, opt, item_sids, split, idx, True, use_bf16)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for idx in batches[2:]:
            train_step(model, opt, item_sids, split, idx, True, use_bf16)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    share = {e.key: round(100 * e.self_cpu_time_total / total, 1) for e in events[:15]}
    ops = round(sum(e.count for e in events if e.key.startswith("aten::")) / args.profile)
    print("fast step, % of CPU time by op:", share, f"({ops} aten ops per step)")
    return {"steps": args.profile, "self_cpu_percent": share, "aten_ops_per_step": ops}


def bench_dropout(args, cfg, item_sids, split, use_bf16: bool) -> dict:
    """What dropout costs the fast step: our mask, torch's ``nn.Dropout``, and no dropout, interleaved rounds."""
    bs = args.batch_size
    _, buckets, _ = epoch_batches(split, bs, args.seed)
    paths = {"sidrec_dropout": new_model(cfg, args.seed), "torch_dropout": new_model(cfg, args.seed, True),
             "no_dropout": new_model(dataclasses.replace(cfg, dropout=0.0), args.seed)}
    seconds = dict.fromkeys(paths, 0.0)
    for model, opt in paths.values():  # untimed warm-up step
        train_step(model, opt, item_sids, split, buckets[:bs], True, use_bf16)
    for r in range(args.rounds):
        for name, (model, opt) in paths.items():  # every path trains on the same batches
            t0 = time.perf_counter()
            for s in range(1 + r * args.steps, 1 + (r + 1) * args.steps):
                train_step(model, opt, item_sids, split, buckets[s * bs : (s + 1) * bs], True, use_bf16)
            seconds[name] += time.perf_counter() - t0
    sps = {n: round(args.rounds * args.steps * bs / s, 1) for n, s in seconds.items()}
    print("fast step, samples/s by dropout:", sps)
    return {"samples_per_s": sps, "dropout": cfg.dropout, "steps_per_path": args.rounds * args.steps}


def bench_curve(args, cfg, item_sids, split) -> dict:
    """fp32 and bf16 from the same weights on the same bucketed batches: the loss curves side by side."""
    bs = args.batch_size
    _, buckets, _ = epoch_batches(split, bs, args.seed + 1)
    curves = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        model, opt = new_model(cfg, args.seed)
        torch.manual_seed(args.seed)  # the same dropout masks for both
        curves[name] = [train_step(model, opt, item_sids, split, buckets[s * bs : (s + 1) * bs], True, bf16)
                        for s in range(args.curve_steps)]
    w = max(1, args.curve_steps // 10)
    mean = {n: [round(float(np.mean(c[i : i + w])), 4) for i in range(0, len(c), w)] for n, c in curves.items()}
    print("loss per window of", w, "steps:", json.dumps(mean))
    return {"steps": args.curve_steps, "window": w, "fp32": mean["fp32"], "bf16": mean["bf16"],
            "max_abs_diff_of_window_means": round(max(abs(a - b) for a, b in zip(mean["fp32"], mean["bf16"])), 4)}


def bench_decode(args, cfg, item_sids, sizes, split, use_bf16: bool) -> dict:
    model = Tiger(cfg, generator=torch.Generator().manual_seed(args.seed)).eval()
    trie = SidTrie(item_sids, sizes)
    test = split.test
    pick = np.sort(np.random.default_rng(args.seed).choice(len(test), args.decode_users, replace=False))
    sample = test.subset(pick)

    def simple() -> np.ndarray:  # dataset order, batch 512, padded to max_history, fp32
        out = []
        for lo in range(0, len(sample), 512):
            hist = torch.as_tensor(sample.history[lo : lo + 512])
            ids, mask = model.encoder_inputs(history_sids(item_sids, hist), torch.as_tensor(sample.user[lo : lo + 512]))
            out.append(constrained_beam_search(model, ids, mask, trie, 20, 10).items.numpy())
        return np.concatenate(out)

    def fast(ex, bf16: bool) -> np.ndarray:
        return generate_rankings(model, ex, item_sids, trie, 20, 10, batch_size=args.decode_batch_size,
                                 progress=False, bf16=bf16)

    timings = {}
    for name, fn in (("simple", simple), ("fast_fp32", lambda: fast(sample, False)),
                     ("fast", lambda: fast(sample, use_bf16))):
        t0 = time.perf_counter()
        timings[name] = (fn(), time.perf_counter() - t0)
        print(f"decode {name}: {len(sample) / timings[name][1]:.1f} users/s")
    ref, fp32, bf = timings["simple"][0], timings["fast_fp32"][0], timings["fast"][0]
    t0 = time.perf_counter()
    fast(test, use_bf16)
    all_s = time.perf_counter() - t0
    print(f"decode all {len(test)} test users (fast path): {all_s:.1f} s")
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ref.tolist(), bf.tolist(), strict=True)])
    return {"users_timed": len(sample), "batch_size_fast": args.decode_batch_size, "beam_size": 20, "topk": 10,
            "simple_users_per_s": round(len(sample) / timings["simple"][1], 1),
            "fast_fp32_users_per_s": round(len(sample) / timings["fast_fp32"][1], 1),
            "fast_users_per_s": round(len(sample) / timings["fast"][1], 1),
            "speedup": round(timings["simple"][1] / timings["fast"][1], 2),
            "fast_fp32_identical_to_simple": bool((fp32 == ref).all()),
            "bf16_exact_top10_match": round(float((bf == ref).all(1).mean()), 4),
            "bf16_overlap_at_10": round(float(overlap), 4),
            "beauty_test_users": len(test), "beauty_test_seconds": round(all_s, 1)}


def run_summary(curve_path: Path) -> dict:
    """``run`` of the result: minutes to the best validation of a whole Beauty run (``tiger_beauty.py --curve``)."""
    curve = json.loads(curve_path.read_text())
    best = curve["best_so_far"]
    return {"curve": str(curve_path), "command": curve["command"], "finished": curve["finished"],
            "epochs": len(curve["epochs"]), "best_epoch": best["epoch"],
            "minutes_to_best": best["train_and_valid_minutes"], "train_minutes_to_best": best["train_minutes"],
            "best_valid_ndcg@10": best["valid.ndcg@10"], "final_metrics": curve.get("final_metrics")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=".sidrec/bench-decode", help="cache of the Beauty SIDs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10, help="training steps per path and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--curve-steps", type=int, default=60, help="0 skips the bf16-vs-fp32 loss curve")
    ap.add_argument("--decode-users", type=int, default=1000)
    ap.add_argument("--decode-batch-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", nargs="*", default=[], choices=["train", "dropout", "curve", "decode"])
    ap.add_argument("--profile", type=int, default=0, help="profile this many fast steps first (torch.profiler)")
    ap.add_argument("--run-curve", help="a curve JSON of benchmarks/tiger_beauty.py --curve: fills run.minutes_to_best")
    ap.add_argument("--out", default="benchmarks/results/cpu_speed.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg, item_sids, sizes, split = load_problem(args.work)
    use_bf16 = bf16_autocast(torch.device("cpu"), True)
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_model(),
              "cpu_bf16": cpu_bf16_isa(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "bf16_autocast_fast_path": use_bf16, "train_prefixes": len(split.train.target),
              "command": "PYTHONPATH=. python benchmarks/cpu_speed.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                  if k not in ("skip", "out", "work") and v is not None)
              + (" --skip " + " ".join(args.skip) if args.skip else "")}
    if args.profile:
        result["profile"] = profile_fast_step(args, cfg, item_sids, split, use_bf16)
    if "train" not in args.skip:
        result["train"] = bench_train(args, cfg, item_sids, split, use_bf16)
    if "dropout" not in args.skip:
        result["dropout"] = bench_dropout(args, cfg, item_sids, split, use_bf16)
    if "curve" not in args.skip and args.curve_steps:
        result["bf16_loss_curve"] = bench_curve(args, cfg, item_sids, split)
    if "decode" not in args.skip:
        result["decode"] = bench_decode(args, cfg, item_sids, sizes, split, use_bf16)
    if args.run_curve:
        result["run"] = run_summary(Path(args.run_curve))
    print(json.dumps(result, indent=2))
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
