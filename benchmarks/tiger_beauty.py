"""TIGER on Amazon Beauty end to end, in calls of at most ~10 minutes (resumes from checkpoints between calls).

GPU (one H100): on this machine run ``benchmarks/stage_gpu.sh configs/beauty.yaml amazon-beauty`` (copies the
dataset and the embedding matrix into the git-ignored ``.carry/``), then on the GPU machine, carrying ``.carry``:

    SIDREC_DATA=.carry/data PYTHONPATH=. python benchmarks/tiger_beauty.py --budget 540 \
        embed.sources=[npy] embed.npy_path=$PWD/.carry/beauty-emb.npy run_dir=.carry/runs/beauty \
        cache_dir=.carry/cache train.batch_size=1024 train.lr=0.002

and repeat the same call while the machine is still warm until it exits 0 (each call trains ~9 minutes and
checkpoints; the final call evaluates on test and writes the results JSON).

Exit code 3 means "time budget used, call again"; 0 means finished and the results JSON was written.
Extra ``key=value`` arguments override configs/beauty.yaml (e.g. ``train.batch_size=1024``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from sidrec.config import load_config
from sidrec.pipeline import Run, results_table
from sidrec.training.metrics_log import read_jsonl
from sidrec.utils import atomic_write_json


def write_curve(run_dir: Path, out: Path, args: argparse.Namespace, metrics: dict | None) -> None:
    """Per epoch: cumulative training and training + validation minutes, loss, samples/s, validation metrics;
    once the run is finished (``metrics``), its full validation and test metrics and the baselines."""
    train_s = wall_s = 0.0
    epochs = []
    for r in read_jsonl(run_dir / "recommender" / "metrics.jsonl"):
        if r["kind"] != "epoch":
            continue
        train_s += r["train_seconds"]
        wall_s += r["train_seconds"] + r.get("valid_seconds", 0.0)
        epochs.append({"epoch": r["epoch"], "train_minutes": round(train_s / 60, 1),
                       "train_and_valid_minutes": round(wall_s / 60, 1), "loss": round(r["loss"], 4),
                       "lr": r["lr"], "samples_per_second": r["samples_per_second"],
                       **{k: round(v, 4) for k, v in r.items() if k.startswith("valid.")}})
    scored = [e for e in epochs if "valid.ndcg@10" in e]
    best = max(scored, key=lambda e: e["valid.ndcg@10"]) if scored else None
    run = json.loads((run_dir / "run.json").read_text())
    atomic_write_json(out, {
        "command": "PYTHONPATH=. python benchmarks/tiger_beauty.py " + " ".join(sys.argv[1:]),
        "config": args.config, "overrides": args.overrides, "commit": run.get("git_commit"),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "finished": metrics is not None,
        "threads": run.get("cpu_threads"), "cpu_bf16": run.get("cpu_bf16", run.get("cpu_amx_bf16")), "epochs": epochs,
        "best_so_far": best,
        "final_metrics": {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)} if metrics else None,
    })


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--config", default="configs/beauty.yaml")
    ap.add_argument("--budget", type=float, default=540.0, help="seconds of training in this call")
    ap.add_argument("--out", default="benchmarks/results/tiger_beauty.json")
    ap.add_argument("--curve", help="also write the validation curve so far here after every call (JSON)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    start = time.time()
    cfg = load_config(args.config, args.overrides)
    run = Run(cfg, progress=not args.quiet)
    # Leave time after the deadline for the final test evaluation.
    metrics = run.run_all(resume=True, deadline=start + args.budget)
    if args.curve:
        write_curve(run.dir, Path(args.curve), args, metrics)
    if metrics is None:
        return 3
    table = results_table(metrics, cfg.eval.ks)
    print(table)
    best = json.loads((run.dir / "recommender" / "best" / "best.json").read_text())
    log = [r for r in read_jsonl(run.dir / "recommender" / "metrics.jsonl") if r["kind"] == "epoch"]
    atomic_write_json(Path(args.out), {
        "config": args.config, "overrides": args.overrides, "metrics": metrics, "best_epoch": best["epoch"],
        "epochs_run": len(log), "train_seconds": sum(r["train_seconds"] for r in log),
        "run": json.loads((run.dir / "run.json").read_text()),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
