"""Tokenizer comparison on Amazon Beauty and Instruments: SASRec, TIGER (rqvae), TIGER (rqkmeans), LETTER, CoST.

Every (dataset, method, seed) is one run directory under ``--runs``; a finished one leaves
``<out>/runs/<dataset>-<method>-s<seed>.json`` and is skipped by later calls. The script works in calls of at most
``--budget`` seconds: it exits 3 when the budget ran out (call it again, it resumes from the recommender
checkpoints) and 0 once every run is done, after writing ``<out>/tokenizers_table.json`` (raw runs + mean/std
over seeds) and ``<out>/tokenizers_table.md`` (the table, with codebook-health columns).

GPU (one H100), from this machine: stage the datasets and the Beauty text embeddings into ``.carry/`` with
``benchmarks/stage_gpu.sh configs/beauty.yaml amazon-beauty`` and ``benchmarks/stage_gpu.sh
configs/instruments.yaml amazon-instruments``, then on the GPU machine, carrying ``.carry``, repeat while it exits 3:

    SIDREC_DATA=.carry/data PYTHONPATH=. python benchmarks/tokenizers_table.py --budget 540 \
        --npy beauty=.carry/beauty-emb.npy --runs .carry/runs/tokenizers --cache .carry/cache

CPU smoke test of the whole script (real datasets, everything shrunk to seconds, collaborative embeddings of
LETTER from co-occurrence instead of a trained SASRec; a few minutes on 2 cores):

    PYTHONPATH=. python benchmarks/tokenizers_table.py --smoke --seeds 42 --runs /tmp/tt-runs --out /tmp/tt-out

Extra ``key=value`` arguments override every run's config (e.g. ``train.batch_size=1024``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from seeds import METRICS, baseline_rows, mean_std  # benchmarks/seeds.py (the script's folder is on sys.path)

from sidrec.config import load_config
from sidrec.pipeline import Run
from sidrec.utils import atomic_write_json, atomic_write_text, read_json

DATASETS = {"beauty": "configs/beauty.yaml", "instruments": "configs/instruments.yaml"}
METHODS = ("sasrec", "tiger-rqvae", "tiger-rqkmeans", "letter", "cost")
LABELS = {"sasrec": "SASRec", "tiger-rqvae": "TIGER (RQ-VAE)", "tiger-rqkmeans": "TIGER (RQ-KMeans)",
          "letter": "LETTER-TIGER", "cost": "CoST-TIGER", "popularity": "popularity",
          "transition": "last-item transition"}

# Everything shrunk for --smoke: a few optimiser steps, tiny models, small tokenizers. The point is to run every
# code path of the script on the real data, not to get numbers.
SMOKE = [
    "model.params.d_model=16", "model.params.num_heads=2", "model.params.d_kv=8", "model.params.d_ff=32", "model.params.num_encoder_layers=1",
    "model.params.num_decoder_layers=1", "train.epochs=1", "train.max_steps=5", "train.valid_users=200",
    "train.device=cpu", "eval.beam_size=10", "eval.ks=[5, 10]", "sasrec.params.d_model=16", "sasrec.train.epochs=1",
    "sasrec.train.max_steps=5",
]
SMOKE_TOKENIZER = {  # smaller codebooks and 2 epochs; method defaults otherwise
    "tiger-rqvae": ["tokenizer.params={codebook_size: 32, epochs: 2, hidden_dims: [64]}"],
    "tiger-rqkmeans": ["tokenizer.params={codebook_size: 32, iters: 5}"],
    "letter": ["tokenizer.params={codebook_size: 32, epochs: 2, hidden_dims: [64], div_clusters: 4}",
               "tokenizer.collab={sources: [cooccurrence], cooccurrence_dim: 32}"],
    "cost": ["tokenizer.params={codebook_size: 32, epochs: 2, hidden_dims: [64]}"],
}


def run_config(dataset: str, method: str, seed: int, args: argparse.Namespace):
    """The RunConfig of one (dataset, method, seed): the method's preset plus shared and CLI overrides."""
    config = {"letter": f"configs/letter-{dataset}.yaml", "cost": f"configs/cost-{dataset}.yaml"}.get(
        method, DATASETS[dataset]
    )
    overrides = []
    if method == "tiger-rqkmeans":
        overrides.append("tokenizer={name: rqkmeans, params: {num_levels: 3, codebook_size: 256}}")
    if dataset in args.npy:  # item embeddings computed elsewhere (text encoders are not on the GPU machine)
        overrides += ["embed.sources=[npy]", f"embed.npy_path={Path(args.npy[dataset]).resolve()}"]
    if args.smoke:
        overrides += SMOKE + SMOKE_TOKENIZER.get(method, [])
    overrides += [f"seed={seed}", f"run_dir={Path(args.runs) / dataset / method / f's{seed}'}",
                  f"cache_dir={args.cache}", *args.overrides]
    return config, overrides, load_config(config, overrides)


def run_one(dataset: str, method: str, seed: int, args: argparse.Namespace, deadline: float) -> dict | None:
    """Train and evaluate one run; None when the deadline cut the recommender's training short."""
    config, overrides, cfg = run_config(dataset, method, seed, args)
    run = Run(cfg, progress=not args.quiet, log=(lambda *_: None) if args.quiet else print)
    started = time.time()
    if method == "sasrec":
        sasrec = run.stage_sasrec(run.stage_prepare())
        metrics = {k.removeprefix("sasrec."): v for k, v in sasrec.items()}
        health = None
    else:
        metrics = run.run_all(resume=True, deadline=deadline)
        if metrics is None:
            return None
        health = metrics.pop("tokenizer.health")
        greedy = _greedy_health(run)
        if greedy is not None:
            health["greedy_collision_rate"] = greedy
    return {"dataset": dataset, "method": method, "seed": seed, "config": config, "overrides": overrides,
            "metrics": metrics, "tokenizer_health": health, "seconds_this_call": time.time() - started,
            "run": read_json(run.dir / "run.json")}


def _greedy_health(run: Run) -> float | None:
    """LETTER's collision rate before its repair: the greedy codes' rate in the last line of the fit log."""
    if run.cfg.tokenizer.name != "letter":
        return None
    lines = (run.dir / "tokenizer" / "fit_log.jsonl").read_text(encoding="utf-8").splitlines()
    return json.loads(lines[-1])["collision_rate"]


def aggregate(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample std over seeds of the test metrics and the codebook health, per (dataset, method)."""
    rows = []
    for dataset in DATASETS:
        for method in METHODS:
            runs = [r for r in results if r["dataset"] == dataset and r["method"] == method]
            if not runs:
                continue
            row = {"dataset": dataset, "method": method, "seeds": [r["seed"] for r in runs]}
            for m in METRICS:
                row[m] = mean_std([r["metrics"][f"test.{m}"] for r in runs])
            if runs[0]["tokenizer_health"] is not None:
                health = [r["tokenizer_health"] for r in runs]
                row["usage"] = mean_std([statistics.fmean(h["usage"]) for h in health])
                row["collision_rate"] = mean_std([h["collision_rate"] for h in health])
                row["max_group"] = max(h["max_group"] for h in health)
                if "greedy_collision_rate" in health[0]:
                    row["greedy_collision_rate"] = mean_std([h["greedy_collision_rate"] for h in health])
            rows.append(row)
        rows += baseline_rows([r for r in results if r["dataset"] == dataset], dataset=dataset)
    return rows


def markdown(rows: list[dict[str, Any]], note: str) -> str:
    """The table: test metrics as mean ± std over seeds, then mean code usage, collision rate and max group."""
    head = ["dataset", "method", "seeds", *(f"{m}" for m in METRICS), "usage", "collisions", "max group"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["dataset"], LABELS[r["method"]], str(len(r["seeds"])) if r["seeds"] else "-"]
        cells += [f"{r[m]['mean']:.4f} ± {r[m]['std']:.4f}" if r["seeds"] else f"{r[m]['mean']:.4f}" for m in METRICS]
        if "usage" in r:
            collisions = f"{r['collision_rate']['mean']:.4f}"
            if "greedy_collision_rate" in r:  # LETTER: after the Sinkhorn repair (before it)
                collisions += f" ({r['greedy_collision_rate']['mean']:.4f} before repair)"
            cells += [f"{r['usage']['mean']:.3f}", collisions, str(r["max_group"])]
        else:
            cells += ["-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return note + "\n\n" + "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")
    ap.add_argument("--budget", type=float, default=540.0, help="seconds of work in this call")
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    ap.add_argument("--npy", nargs="*", default=[], metavar="DATASET=PATH",
                    help="precomputed item embeddings per dataset (embed.sources=[npy])")
    ap.add_argument("--runs", default="runs/tokenizers_table", help="parent of the run directories")
    ap.add_argument("--cache", default=".sidrec/cache", help="cache_dir shared by all runs (embeddings)")
    ap.add_argument("--out", default="benchmarks/results", help="where the JSON and markdown results go")
    ap.add_argument("--smoke", action="store_true", help="shrink everything: checks the script, not the methods")
    ap.add_argument("--min-seconds", type=float, default=60.0,
                    help="do not start another run with less than this left of the budget")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    start = time.time()
    deadline = start + args.budget
    bad = [s for s in args.npy if "=" not in s or s.split("=", 1)[0] not in DATASETS]
    if bad:
        ap.error(f"--npy {bad[0]!r}: expected DATASET=PATH with DATASET in {', '.join(DATASETS)}")
    args.npy = dict(s.split("=", 1) for s in args.npy)
    out = Path(args.out)
    name = "tokenizers_table_smoke" if args.smoke else "tokenizers_table"
    results = []
    for dataset in args.datasets:
        for method in args.methods:
            for seed in args.seeds:
                path = out / "runs" / f"{name}-{dataset}-{method}-s{seed}.json"
                if path.exists():
                    results.append(read_json(path))
                    continue
                if time.time() > deadline - args.min_seconds:
                    print(f"budget used before {dataset}/{method}/s{seed}; call again to continue")
                    return 3
                print(f"== {dataset} / {method} / seed {seed}", flush=True)
                res = run_one(dataset, method, seed, args, deadline)
                if res is None:
                    print(f"budget used during {dataset}/{method}/s{seed}; call again to resume it")
                    return 3
                atomic_write_json(path, res)
                results.append(res)
    rows = aggregate(results)
    note = (f"Test metrics on {', '.join(args.datasets)} (leave-one-out, full ranking, trie-constrained beam), "
            f"mean ± sample std over seeds {args.seeds}; usage = mean fraction of codes used per level; "
            "collisions = share of items needing a non-zero dedup token. Produced by "
            f"`benchmarks/tokenizers_table.py{' --smoke' if args.smoke else ''}`.")
    if args.smoke:
        note = "SMOKE RUN (tiny models, a few steps): these numbers check the script, not the methods.\n\n" + note
    atomic_write_json(out / f"{name}.json", {"rows": rows, "runs": results, "overrides": args.overrides})
    atomic_write_text(out / f"{name}.md", markdown(rows, note))
    print(markdown(rows, note))
    return 0


if __name__ == "__main__":
    sys.exit(main())
