"""Joint tokenizer + recommender training on Amazon Beauty: TIGER, LETTER and ETEGRec with and without SODA, DIGER
(FrqUD, SDUD), naive straight-through joint training, and SODA without alternation.

Rows (``--methods``):

==================  ====================================================================================
tiger               configs/beauty.yaml (two-stage)
tiger-soda          + alternating schedule (cycles of 2 epochs, 10 warm-up, 100 fine-tune) + SODA
tiger-soda-joint    the no-alternation ablation: SODA with the fully joint schedule
letter              configs/letter-beauty.yaml (two-stage)
letter-soda         + alternating schedule + SODA
etegrec             configs/etegrec-beauty.yaml (alternating, L_SIA + L_PSA)
etegrec-soda        + SODA
diger-frqud         configs/diger-frqud-beauty.yaml (ETEGRec's model, DIGER tokenizer, joint schedule, hard codes)
diger-sdud          configs/diger-sdud-beauty.yaml (the same with SDUD)
st-joint            configs/st-joint-beauty.yaml (DIGER without Gumbel noise: naive straight-through)
==================  ====================================================================================

SODA's settings here (gamma 0.1, forward KL, tau 1, in-batch negatives) are ours: the paper's are not public.
Rows whose tokenizer or preset is not in this checkout (``letter``, ``diger``) are skipped with a message.

Every (method, seed) is one run directory under ``--runs``; a finished one leaves
``<out>/runs/joint_table-<method>-s<seed>.json`` and is skipped later. The script works in calls of at most
``--budget`` seconds: exit 3 means "budget used, call again" (it resumes from the joint checkpoints), exit 0 means
every run is done and ``<out>/joint_table.json`` and ``<out>/joint_table.md`` (mean ± std over seeds, codebook
usage per level and collision rate of the final tokenizer) were written.

GPU (one H100): stage the dataset and Beauty's text embeddings into ``.carry/`` with
``benchmarks/stage_gpu.sh configs/beauty.yaml amazon-beauty``, then on the GPU machine, carrying ``.carry``, repeat
while it exits 3:

    SIDREC_DATA=.carry/data PYTHONPATH=. python benchmarks/joint_table.py --budget 540 \
        --npy .carry/beauty-emb.npy --runs .carry/runs/joint --cache .carry/cache

(``--npy`` replaces the text embeddings of the TIGER and LETTER rows; the ETEGRec and DIGER rows train their
256-d SASRec embeddings on the GPU, cached in ``--cache``.)

CPU smoke test of the whole script (real data, everything shrunk to seconds, co-occurrence embeddings):

    PYTHONPATH=. python benchmarks/joint_table.py --smoke --seeds 42 --runs /tmp/jt-runs --out /tmp/jt-out

Extra ``key=value`` arguments override every run's config (e.g. ``train.batch_size=1024``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from seeds import METRICS, baseline_rows, mean_std  # benchmarks/seeds.py (the script's folder is on sys.path)

from sidrec.config import load_config
from sidrec.pipeline import Run
from sidrec.tokenizers import TOKENIZERS
from sidrec.utils import atomic_write_json, atomic_write_text, read_json

SODA = "schedule.losses.soda={weight: 0.1, direction: forward, tau: 1.0, in_batch: true}"
# A tokenizer trained with alignment losses reduces its own loss to means (RunConfig.validate): the TIGER + SODA rows'
# RQ-VAE is therefore fitted on the mean scale, unlike the TIGER row's (METHODS 1.1, summed).
MEAN = "tokenizer.params.reduction=mean"
ALTERNATING = ["schedule.name=alternating", "schedule.cycle_epochs=2", "schedule.tokenizer_lr=0.0001",
               "schedule.warmup_epochs=10", "schedule.finetune_epochs=100"]
METHODS: dict[str, tuple[str, str, list[str]]] = {  # name -> (label, preset, overrides)
    "tiger": ("TIGER", "configs/beauty.yaml", []),
    "tiger-soda": ("TIGER + SODA", "configs/beauty.yaml", [*ALTERNATING, SODA, MEAN]),
    "tiger-soda-joint": ("TIGER + SODA, no alternation", "configs/beauty.yaml",
                         [*ALTERNATING, "schedule.name=joint", SODA, MEAN]),
    "letter": ("LETTER", "configs/letter-beauty.yaml", []),
    "letter-soda": ("LETTER + SODA", "configs/letter-beauty.yaml", [*ALTERNATING, SODA]),
    "etegrec": ("ETEGRec", "configs/etegrec-beauty.yaml", []),
    "etegrec-soda": ("ETEGRec + SODA", "configs/etegrec-beauty.yaml", [SODA]),
    "diger-frqud": ("DIGER-FrqUD", "configs/diger-frqud-beauty.yaml", []),
    "diger-sdud": ("DIGER-SDUD", "configs/diger-sdud-beauty.yaml", []),
    "st-joint": ("straight-through joint", "configs/st-joint-beauty.yaml", []),
}

# --smoke: tiny models, tiny codebooks, 3 short epochs (tokenizer, recommender, fine-tune) on the real data. The
# point is to run every code path of the script, not to get numbers.
SMOKE = [
    "data.max_history=10", "embed.sources=[cooccurrence]", "embed.cooccurrence_dim=32",
    "tokenizer.params.codebook_size=16", "tokenizer.params.latent_dim=8", "tokenizer.params.hidden_dims=[32]",
    "tokenizer.params.epochs=2",
    "model.params.d_model=16", "model.params.num_heads=2", "model.params.d_kv=8", "model.params.d_ff=32", "model.params.num_encoder_layers=1",
    "model.params.num_decoder_layers=1", "train.epochs=3", "train.prefixes_per_user=1", "train.valid_users=200",
    "train.warmup_steps=10", "train.device=cpu", "eval.beam_size=10", "eval.ks=[5, 10]",
    "schedule.warmup_epochs=1", "schedule.finetune_epochs=1",
]
SMOKE_LETTER = ["tokenizer.params.div_clusters=4", "tokenizer.collab={sources: [cooccurrence], cooccurrence_dim: 8}"]


def available(method: str) -> str | None:
    """Why ``method`` cannot run in this checkout, or None when it can."""
    _, preset, overrides = METHODS[method]
    if not Path(preset).exists():
        return f"{preset} is not in this checkout"
    names = [o.split("=", 1)[1] for o in overrides if o.startswith("tokenizer.name=")]
    name = names[-1] if names else load_config(preset).tokenizer.name
    return None if name in TOKENIZERS else f"tokenizer {name!r} is not registered in this checkout"


def run_config(method: str, seed: int, args: argparse.Namespace):
    """The preset and overrides of one (method, seed), and the loaded RunConfig."""
    _, preset, overrides = METHODS[method]
    overrides = list(overrides)
    if args.npy and load_config(preset).embed.sources != ["sasrec"]:
        overrides += ["embed.sources=[npy]", f"embed.npy_path={Path(args.npy).resolve()}"]
    if args.smoke:
        overrides += SMOKE + (SMOKE_LETTER if method.startswith("letter") else [])
    overrides += [f"seed={seed}", f"run_dir={Path(args.runs) / method / f's{seed}'}", f"cache_dir={args.cache}",
                  *args.overrides]
    return preset, overrides, load_config(preset, overrides)


def run_one(method: str, seed: int, args: argparse.Namespace, deadline: float) -> dict[str, Any] | None:
    """Train and evaluate one run; None when the deadline cut training short (call again to resume)."""
    preset, overrides, cfg = run_config(method, seed, args)
    run = Run(cfg, progress=not args.quiet, log=(lambda *_: None) if args.quiet else print)
    started = time.time()
    metrics = run.run_all(resume=True, deadline=deadline)
    if metrics is None:
        return None
    health = metrics.pop("tokenizer.health")
    best = read_json(run.dir / "recommender" / "best" / "best.json")
    return {"method": method, "seed": seed, "config": preset, "overrides": overrides, "metrics": metrics,
            "tokenizer_health": health, "best_epoch": best["epoch"], "seconds_this_call": time.time() - started,
            "run": read_json(run.dir / "run.json")}


def aggregate(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample std over seeds of the test metrics and of the codebook usage per level, per method."""
    rows = []
    for method in METHODS:
        runs = [r for r in results if r["method"] == method]
        if not runs:
            continue
        row: dict[str, Any] = {"method": method, "seeds": [r["seed"] for r in runs]}
        for m in METRICS:
            row[m] = mean_std([r["metrics"][f"test.{m}"] for r in runs])
        health = [r["tokenizer_health"] for r in runs]
        row["usage"] = [mean_std(list(level)) for level in zip(*(h["usage"] for h in health))]
        row["collision_rate"] = mean_std([h["collision_rate"] for h in health])
        rows.append(row)
    return rows + baseline_rows(results)


def markdown(rows: list[dict[str, Any]], note: str) -> str:
    """Test metrics as mean ± std over seeds, code usage per level (mean) and the collision rate."""
    head = ["method", "seeds", *METRICS, "usage per level", "collisions"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if not r["seeds"]:  # a non-learned baseline: one value, no tokenizer
            label = {"transition": "last-item transition"}.get(r["method"], r["method"])
            cells = [label, "-", *(f"{r[m]['mean']:.4f}" for m in METRICS), "-", "-"]
            lines.append("| " + " | ".join(cells) + " |")
            continue
        cells = [METHODS[r["method"]][0], str(len(r["seeds"]))]
        cells += [f"{r[m]['mean']:.4f} ± {r[m]['std']:.4f}" for m in METRICS]
        cells += [" / ".join(f"{u['mean']:.2f}" for u in r["usage"]), f"{r['collision_rate']['mean']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return note + "\n\n" + "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")
    ap.add_argument("--budget", type=float, default=540.0, help="seconds of work in this call")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    ap.add_argument("--npy", default=None, help="precomputed Beauty text embeddings (TIGER and LETTER rows)")
    ap.add_argument("--runs", default="runs/joint_table", help="parent of the run directories")
    ap.add_argument("--cache", default=".sidrec/cache", help="cache_dir shared by all runs (embeddings)")
    ap.add_argument("--out", default="benchmarks/results", help="where the JSON and markdown results go")
    ap.add_argument("--smoke", action="store_true", help="shrink everything: checks the script, not the methods")
    ap.add_argument("--min-seconds", type=float, default=60.0,
                    help="do not start another run with less than this left of the budget")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    deadline = time.time() + args.budget
    out = Path(args.out)
    name = "joint_table_smoke" if args.smoke else "joint_table"
    results, skipped = [], {}
    for method in args.methods:
        if (why := available(method)) is not None:
            skipped[method] = why
            print(f"skipping {method}: {why}")
            continue
        for seed in args.seeds:
            path = out / "runs" / f"{name}-{method}-s{seed}.json"
            if path.exists():
                results.append(read_json(path))
                continue
            if time.time() > deadline - args.min_seconds:
                print(f"budget used before {method}/s{seed}; call again to continue")
                return 3
            print(f"== {method} / seed {seed}", flush=True)
            res = run_one(method, seed, args, deadline)
            if res is None:
                print(f"budget used during {method}/s{seed}; call again to resume it")
                return 3
            atomic_write_json(path, res)
            results.append(res)
    rows = aggregate(results)
    note = (f"Amazon Beauty test metrics (leave-one-out, full ranking, trie-constrained beam), mean ± sample std "
            f"over seeds {args.seeds}; usage = fraction of codes used per level by the final tokenizer; collisions "
            f"= share of items needing a non-zero dedup token. Produced by "
            f"`benchmarks/joint_table.py{' --smoke' if args.smoke else ''}`.")
    if skipped:
        note += " Not run: " + "; ".join(f"{m} ({why})" for m, why in skipped.items()) + "."
    if args.smoke:
        note = "SMOKE RUN (tiny models, a few steps): these numbers check the script, not the methods.\n\n" + note
    atomic_write_json(out / f"{name}.json", {"rows": rows, "runs": results, "skipped": skipped,
                                             "overrides": args.overrides})
    atomic_write_text(out / f"{name}.md", markdown(rows, note))
    print(markdown(rows, note))
    return 0


if __name__ == "__main__":
    sys.exit(main())
