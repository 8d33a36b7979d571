"""int8 dynamic quantization for decoding and serving, against fp32 and bf16 autocast, on a trained run.

Issue 15's optional lever. ``torch.ao.quantization.quantize_dynamic`` turns every ``nn.Linear`` of a copy of the
run's model (attention projections, feed-forwards, level heads) into int8 weights with activations quantized per
call; embeddings, norms and attention arithmetic stay fp32. Each precision decodes the same seeded sample of test
users (beam 20, top-10, constrained, the fast path's length-sorted trimmed batches), interleaved over rounds, at a
batch size for offline evaluation and one for serving. Quality: Recall@10 / NDCG@10 on the sample, and agreement
of the top-10 lists with fp32's.

    PYTHONPATH=. python benchmarks/probes/decode_int8.py --run runs/beauty-60min --threads 2      # ~3 min
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
from torch.ao.quantization import quantize_dynamic

from sidrec.data.splits import leave_one_out
from sidrec.eval.evaluate import generate_rankings
from sidrec.eval.metrics import topk_metrics
from sidrec.serve.service import Recommender
from sidrec.utils import atomic_write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/beauty-60min", help="a finished run directory")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--users", type=int, default=2000, help="test users decoded at the evaluation batch size")
    ap.add_argument("--serve-users", type=int, default=400, help="test users decoded at the serving batch size")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--serve-batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/decode_int8.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rec = Recommender.from_run(args.run, "cpu")
    test = leave_one_out(rec.dataset, rec.max_history).test
    pick = np.sort(np.random.default_rng(args.seed).choice(len(test), args.users, replace=False))
    sample = test.subset(pick)
    serve_sample = test.subset(pick[: args.serve_users])
    int8 = quantize_dynamic(copy.deepcopy(rec.model), {torch.nn.Linear}, dtype=torch.qint8).eval()
    variants = {"fp32": (rec.model, False), "bf16": (rec.model, True), "int8": (int8, False)}

    def decode(name: str, examples, batch_size: int) -> np.ndarray:
        model, bf16 = variants[name]
        return generate_rankings(model, examples, rec.item_sids, rec.trie, 20, 10, batch_size=batch_size,
                                 progress=False, bf16=bf16)

    seconds = {(n, b): 0.0 for n in variants for b in ("eval", "serve")}
    ranked = {}
    for name in variants:  # untimed warm-up
        decode(name, serve_sample, args.serve_batch_size)
    for r in range(args.rounds):
        for name in variants:
            for kind, examples, bs in (("eval", sample, args.batch_size),
                                       ("serve", serve_sample, args.serve_batch_size)):
                t0 = time.perf_counter()
                out = decode(name, examples, bs)
                seconds[name, kind] += time.perf_counter() - t0
                if kind == "eval":
                    ranked[name] = out
        print(f"round {r} done", flush=True)
    users_per_s = {kind: {n: round(args.rounds * (len(sample) if kind == "eval" else len(serve_sample))
                                   / seconds[n, kind], 1) for n in variants} for kind in ("eval", "serve")}
    ref = ranked["fp32"]
    quality = {}
    for name, lists in ranked.items():
        metrics = topk_metrics(lists, sample.target, [10])
        quality[name] = {"recall@10": round(metrics["recall@10"], 4), "ndcg@10": round(metrics["ndcg@10"], 4),
                         "exact_top10_match_vs_fp32": round(float((lists == ref).all(1).mean()), 4),
                         "overlap@10_vs_fp32": round(float(np.mean([len(set(a) & set(b)) / 10 for a, b in
                                                                    zip(lists.tolist(), ref.tolist(), strict=True)])),
                                                     4)}
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "run": args.run,
        "command": "PYTHONPATH=. python benchmarks/probes/decode_int8.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "users": {"eval": len(sample), "serve": len(serve_sample)},
        "batch_size": {"eval": args.batch_size, "serve": args.serve_batch_size},
        "users_per_s": users_per_s,
        "speedup_vs_fp32": {kind: {n: round(v / users_per_s[kind]["fp32"], 2) for n, v in per.items()}
                            for kind, per in users_per_s.items()},
        "quality": quality,
    }
    print(result)
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
