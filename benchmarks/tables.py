"""The result tables of docs/results.md: one runner for every (dataset, row, seed), one renderer from its files.

Every finished run leaves ``benchmarks/results/tables/<dataset>/<row>-seed<N>.json``: the flat metric keys of its
``metrics.json`` (``test.recall@10``, ``transition.test.ndcg@10``, ...), its config and overrides, seed, commit,
threads, wall minutes (training + validation, in all and up to the selected epoch) and the codebook health. The
tables in docs/results.md are regenerated from those files alone (``render``), so a table never holds a number
that no file backs.

    # run rows (resumable: exit 3 = the budget of this call is used, call again; 0 = every run is done)
    PYTHONPATH=. python benchmarks/tables.py run beauty --rows tiger --seeds 42 1 2 --budget 540
    # the SASRec row of a dataset (``sidrec baseline`` on the same split)
    PYTHONPATH=. python benchmarks/tables.py run beauty --rows sasrec --seeds 42
    # a run made by another command (e.g. benchmarks/tiger_beauty.py) recorded as a row
    PYTHONPATH=. python benchmarks/tables.py record beauty tiger runs/beauty
    # rewrite the tables in docs/results.md (--check: exit 1 if they are not what the files give)
    PYTHONPATH=. python benchmarks/tables.py render

Each dataset has one recipe (``DATASETS[...].recipe``: the recommender's size and budget rule) that every row
shares, so rows differ only in the method. Extra ``key=value`` arguments of ``run`` apply to every run and are
recorded in its file.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidrec.config import load_config
from sidrec.pipeline import Run
from sidrec.training.metrics_log import read_jsonl
from sidrec.utils import atomic_write_json, atomic_write_text, read_json

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "tables"
DOC = ROOT / "docs" / "results.md"
METRICS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")


@dataclass
class Row:
    label: str
    preset: str
    overrides: list[str] = field(default_factory=list)


@dataclass
class Dataset:
    title: str
    recipe: list[str]  # shared by every row: the recommender's size and budget rule
    rows: dict[str, Row]
    paper: dict[str, tuple[float | None, ...]]  # label -> (R@5, N@5, R@10, N@10), from ../shared/TARGETS.md


SODA = "schedule.losses.soda={weight: 0.1, direction: forward, tau: 1.0, in_batch: true}"
# A tokenizer trained with alignment losses reduces its own loss to means (RunConfig.validate): the TIGER + SODA
# rows' RQ-VAE is therefore fitted on the mean scale, unlike the TIGER row's (METHODS 1.1, summed).
MEAN = "tokenizer.params.reduction=mean"
ALTERNATING = ["schedule.name=alternating", "schedule.cycle_epochs=2", "schedule.tokenizer_lr=0.0001",
               "schedule.warmup_epochs=10", "schedule.finetune_epochs=100"]
SASREC = "SASRec (sidrec baseline)"
RQKMEANS = ["tokenizer.name=rqkmeans", "tokenizer.params={num_levels: 3, codebook_size: 256}"]


def seed_rows(tiger: str, letter: str, cost: str, etegrec: str, diger: str, st_joint: str) -> dict[str, Row]:
    """The rows of the seed methods on one dataset, from its presets."""
    return {
        "tiger": Row("TIGER (rqvae)", tiger),
        "rqkmeans": Row("TIGER (rqkmeans)", tiger, RQKMEANS),
        "letter": Row("LETTER-TIGER", letter),
        "cost": Row("CoST-TIGER (contrastive)", cost),
        "cost-mse-cl": Row("CoST-TIGER (mse + contrastive)", cost, ["tokenizer.params.recon=mse+contrastive"]),
        "etegrec": Row("ETEGRec", etegrec),
        "etegrec-joint": Row("ETEGRec, fully joint", etegrec, ["schedule.name=joint"]),
        "diger-frqud": Row("DIGER-FrqUD", diger.format(ud="frqud")),
        "diger-sdud": Row("DIGER-SDUD", diger.format(ud="sdud")),
        "st-joint": Row("straight-through joint", st_joint),
        "tiger-soda": Row("TIGER + SODA", tiger, [*ALTERNATING, SODA, MEAN]),
        "letter-soda": Row("LETTER + SODA", letter, [*ALTERNATING, SODA]),
        "etegrec-soda": Row("ETEGRec + SODA", etegrec, [SODA]),
        "tiger-soda-joint": Row("TIGER + SODA, no alternation", tiger, [*ALTERNATING, "schedule.name=joint", SODA, MEAN]),
        "sasrec": Row(SASREC, tiger),
    }


DATASETS: dict[str, Dataset] = {
    "beauty": Dataset(
        title="Amazon Beauty (2014, S3Rec split)",
        recipe=["train.valid_users=3000"],
        rows=seed_rows("configs/beauty.yaml", "configs/letter-beauty.yaml", "configs/cost-beauty.yaml",
                       "configs/etegrec-beauty.yaml", "configs/diger-{ud}-beauty.yaml", "configs/st-joint-beauty.yaml"),
        paper={
            "TIGER paper": (.0454, .0321, .0648, .0384),
            "TIGER paper, 3 seeds mean": (.0441, .0309, .0642, .0374),
            "LETTER-TIGER (LETTER paper)": (.0431, .0286, .0672, .0364),
            "TIGER reproduction (cornac)": (.0419, .0270, .0634, .0338),
            "TIGER reproduction (GRID, 4.9 GPU-hours)": (None, None, .0655, .0369),
            "tuned SASRec (cornac)": (.0508, .0348, .0740, .0423),
            "RPG (KDD'25)": (.0550, .0381, .0809, .0464),
        },
    ),
    "instruments": Dataset(
        title="Amazon Instruments (2018, LC-Rec split)",
        recipe=["train.valid_users=3000"],
        rows={"tiger": Row("TIGER (rqvae)", "configs/instruments.yaml"),
              "rqkmeans": Row("TIGER (rqkmeans)", "configs/instruments.yaml", RQKMEANS),
              "letter": Row("LETTER-TIGER", "configs/letter-instruments.yaml"),
              "cost": Row("CoST-TIGER (contrastive)", "configs/cost-instruments.yaml"),
              "sasrec": Row(SASREC, "configs/instruments.yaml")},
        paper={"SASRec (LETTER paper)": (.0751, .0627, .0947, .0690),
               "TIGER (LETTER's run)": (.0870, .0737, .1058, .0797),
               "LETTER-TIGER (LETTER paper)": (.0909, .0763, .1122, .0831)},
    ),
    "office": Dataset(
        title="Amazon Office (2018, LC-Rec split)",
        recipe=["train.valid_users=3000"],
        rows={"tiger": Row("TIGER (rqvae)", "configs/office.yaml"),
              "rqkmeans": Row("TIGER (rqkmeans)", "configs/office.yaml", RQKMEANS),
              "sasrec": Row(SASREC, "configs/office.yaml")},
        paper={},
    ),
    "ml-100k": Dataset(
        title="MovieLens-100K, the `make demo` preset",
        recipe=[],
        rows={"tiger": Row("TIGER (demo)", "configs/ml-100k-demo.yaml"),
              "sasrec": Row(SASREC, "configs/ml-100k-demo.yaml")},
        paper={},
    ),
}

# --smoke: tiny models, tiny codebooks, 3 short epochs on the real data; checks the runner, not the methods. Its
# files go to benchmarks/results/tables-smoke/, which no table reads.
SMOKE = [
    "data.max_history=10", "embed.sources=[cooccurrence]", "embed.cooccurrence_dim=32",
    "tokenizer.params.codebook_size=16",
    "model.params.d_model=16", "model.params.num_heads=2", "model.params.d_kv=8", "model.params.d_ff=32",
    "model.params.num_encoder_layers=1", "model.params.num_decoder_layers=1", "train.epochs=3",
    "train.prefixes_per_user=1", "train.valid_users=200", "train.warmup_steps=10", "train.device=cpu",
    "eval.beam_size=10", "eval.ks=[5, 10]", "sasrec.params.d_model=16", "sasrec.train.epochs=1",
]
SMOKE_TOKENIZER = {"rqkmeans": ["tokenizer.params.iters=5"],
                   "letter": ["tokenizer.params.epochs=2", "tokenizer.params.div_clusters=4",
                              "tokenizer.collab={sources: [cooccurrence], cooccurrence_dim: 8}"]}


def smoke_overrides(preset: str, overrides: list[str]) -> list[str]:
    """SMOKE plus the shrinking of the row's tokenizer (k-means has iterations, the others epochs)."""
    name = load_config(str(ROOT / preset), overrides).tokenizer.name
    return SMOKE + SMOKE_TOKENIZER.get(name, ["tokenizer.params.epochs=2"])


# -- running --------------------------------------------------------------------------------------------------------
def result_path(dataset: str, row: str, seed: int, smoke: bool = False) -> Path:
    return (RESULTS.with_name("tables-smoke") if smoke else RESULTS) / dataset / f"{row}-seed{seed}.json"


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def training_minutes(run_dir: Path) -> tuple[float, float | None, int | None, int]:
    """(training + validation minutes in all, the same up to the selected epoch, that epoch, epochs run)."""
    log = run_dir / "recommender" / "metrics.jsonl"
    epochs = [r for r in read_jsonl(log) if r["kind"] == "epoch"] if log.exists() else []
    best_file = run_dir / "recommender" / "best" / "best.json"
    best = read_json(best_file)["epoch"] if best_file.exists() else None
    total = to_best = 0.0
    for r in epochs:
        total += r["train_seconds"] + r.get("valid_seconds", 0.0)
        if best is not None and r["epoch"] <= best:
            to_best = total
    return round(total / 60, 2), (round(to_best / 60, 2) if best is not None else None), best, len(epochs)


def record(dataset: str, row: str, seed: int, run_dir: Path, metrics: dict[str, Any], overrides: list[str],
           preset: str, smoke: bool = False) -> Path:
    """Write one finished run's file (see the module docstring) and return its path."""
    run = read_json(run_dir / "run.json") if (run_dir / "run.json").exists() else {}
    total, to_best, best, epochs = training_minutes(run_dir)
    flat = {k: v for k, v in metrics.items() if isinstance(v, float | int) and not isinstance(v, bool)}
    out = result_path(dataset, row, seed, smoke)
    atomic_write_json(out, {
        "dataset": dataset, "row": row, "label": DATASETS[dataset].rows[row].label, "seed": seed,
        "config": preset, "overrides": overrides, "commit": run.get("git_commit") or git_commit(),
        "threads": run.get("cpu_threads"), "cpu_bf16": run.get("cpu_bf16", run.get("cpu_amx_bf16")), "torch": run.get("torch"),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_minutes": total, "minutes_to_best": to_best, "best_epoch": best, "epochs_run": epochs,
        **flat, "tokenizer.health": metrics.get("tokenizer.health"), "protocol": metrics.get("protocol"),
    })
    return out


def run_rows(args: argparse.Namespace) -> int:
    ds = DATASETS[args.dataset]
    rows = list(ds.rows) if args.rows == ["all"] else args.rows
    unknown = [r for r in rows if r not in ds.rows]
    if unknown:
        raise SystemExit(f"unknown row(s) {unknown} of {args.dataset}; rows: {', '.join(ds.rows)}")
    deadline = time.time() + args.budget
    for seed in args.seeds:
        for name in rows:
            row = ds.rows[name]
            if result_path(args.dataset, name, seed, args.smoke).exists():
                continue
            if not (ROOT / row.preset).exists():
                print(f"skipping {name}: {row.preset} is not in this checkout")
                continue
            if time.time() >= deadline - args.min_seconds:
                print(f"budget used before {name} / seed {seed}; call again to continue")
                return 3
            run_dir = Path(args.runs) / args.dataset / f"{name}-seed{seed}"
            overrides = [*ds.recipe, *row.overrides,
                         *(smoke_overrides(row.preset, row.overrides) if args.smoke else []), *args.overrides,
                         f"seed={seed}", f"run_dir={run_dir}", f"cache_dir={args.cache}"]
            cfg = load_config(str(ROOT / row.preset), overrides)
            run = Run(cfg, progress=not args.quiet, log=(lambda *_: None) if args.quiet else print)
            print(f"== {args.dataset} / {name} / seed {seed}", flush=True)
            if name == "sasrec":  # the baseline of the same split, trained to its own early stop
                metrics = {**run.stage_sasrec(run.stage_prepare()),
                           "protocol": {"split": "leave-one-out", "ranking": "full"}}
            else:
                metrics = run.run_all(resume=True, deadline=deadline)
                if metrics is None:
                    print(f"budget used during {name} / seed {seed}; call again to resume it")
                    return 3
            out = record(args.dataset, name, seed, run_dir, metrics, overrides, row.preset, args.smoke)
            print(f"recorded {out}", flush=True)
    return 0


def record_cmd(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    cfg = read_json(run_dir / "run.json")
    metrics = read_json(run_dir / "metrics.json")
    seed = cfg.get("seed", args.seed)
    overrides = args.overrides or [f"run_dir={run_dir}"]
    print(record(args.dataset, args.row, seed, run_dir, metrics, overrides, args.preset or
                 DATASETS[args.dataset].rows[args.row].preset))
    return 0


# -- rendering ------------------------------------------------------------------------------------------------------
def load_results(dataset: str) -> dict[str, list[dict[str, Any]]]:
    """Row name -> its finished runs (one per seed), in seed order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((RESULTS / dataset).glob("*-seed*.json")):
        r = read_json(path)
        out.setdefault(r["row"], []).append(r)
    return {k: sorted(v, key=lambda r: r["seed"]) for k, v in out.items()}


def cell(values: list[float], digits: int = 4) -> str:
    """Mean, and ± sample std over seeds when there are several; metrics with 4 decimals and no leading 0."""
    def f(x: float) -> str:
        text = f"{abs(x):.{digits}f}"
        return ("-" if x < 0 else "") + (text.lstrip("0") if digits == 4 else text)
    if len(values) == 1:
        return f(values[0])
    return f"{f(statistics.fmean(values))} ± {f(statistics.stdev(values))}"


def render_dataset(name: str) -> str:
    ds = DATASETS[name]
    results = load_results(name)
    head = "| test | seeds | R@5 | N@5 | R@10 | N@10 | valid N@10 | minutes to best | collisions |"
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    first = None
    for row, runs in ((r, results[r]) for r in ds.rows if r in results):
        first = first or runs[0]
        prefix = "sasrec.test." if row == "sasrec" else "test."
        valid = "sasrec.valid.ndcg@10" if row == "sasrec" else "valid.ndcg@10"
        seeds = ", ".join(str(r["seed"]) for r in runs)
        health = [r["tokenizer.health"]["collision_rate"] for r in runs if r.get("tokenizer.health")]
        minutes = [r["minutes_to_best"] for r in runs if r.get("minutes_to_best") is not None]
        lines.append(f"| {ds.rows[row].label} | {seeds} | "
                     + " | ".join(cell([r[prefix + m] for r in runs]) for m in METRICS)
                     + f" | {cell([r[valid] for r in runs]) if all(valid in r for r in runs) else ''}"
                     + f" | {cell(minutes, 1) if minutes else ''} | {cell(health) if health and row != 'sasrec' else ''} |")
        if all(f"hybrid.test.{METRICS[0]}" in r for r in runs):  # eval.transition_mix: its own row
            lams = ", ".join(f"{r['hybrid.lambda']:g}" for r in runs)
            lines.append(f"| {ds.rows[row].label} + transition mix (lambda {lams}, on validation) | {seeds} | "
                         + " | ".join(cell([r[f"hybrid.test.{m}"] for r in runs]) for m in METRICS)
                         + f" | {cell([r['hybrid.valid.ndcg@10'] for r in runs])} | | |")
    if first is not None and "transition.test.recall@5" in first:
        for base, label in (("popularity", "popularity"), ("transition", "last-item transition")):
            lines.append(f"| {label} (same split) | | "
                         + " | ".join(cell([first[f"{base}.test.{m}"]]) for m in METRICS)
                         + f" | {cell([first[f'{base}.valid.ndcg@10']])} | | |")
    for label, values in ds.paper.items():
        lines.append(f"| {label} | | " + " | ".join("" if v is None else cell([v]) for v in values) + " | | | |")
    missing = [f"{r}" for r in ds.rows if r not in results]
    note = (f"\n\nRows not run yet: {', '.join(missing)}." if missing else "")
    return (f"{ds.title}, test metrics of the checkpoint selected on validation NDCG@10 (mean ± sample std over "
            "the seeds listed); generated by `benchmarks/tables.py render` from "
            f"`benchmarks/results/tables/{name}/`.\n\n" + "\n".join(lines) + note)


def render_doc(text: str) -> str:
    """``text`` with every ``<!-- table:NAME -->`` ... ``<!-- /table:NAME -->`` block regenerated."""
    def sub(m: re.Match) -> str:
        return f"<!-- table:{m[1]} -->\n{render_dataset(m[1])}\n<!-- /table:{m[1]} -->"
    return re.sub(r"<!-- table:([\w-]+) -->.*?<!-- /table:\1 -->", sub, text, flags=re.S)


def render_cmd(args: argparse.Namespace) -> int:
    text = DOC.read_text()
    new = render_doc(text)
    if args.check:
        if new != text:
            print("docs/results.md: the tables differ from what benchmarks/results/tables gives; run render")
            return 1
        return 0
    if new != text:
        atomic_write_text(DOC, new)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run rows x seeds (resumable)")
    r.add_argument("dataset", choices=DATASETS)
    r.add_argument("--rows", nargs="+", default=["all"])
    r.add_argument("--seeds", nargs="+", type=int, default=[42, 1, 2])
    r.add_argument("--budget", type=float, default=540.0, help="seconds of work in this call")
    r.add_argument("--runs", default="runs/tables", help="run directories go to <runs>/<dataset>/<row>-seed<N>")
    r.add_argument("--cache", default=".sidrec/cache", help="cache_dir shared by all runs (embeddings)")
    r.add_argument("--min-seconds", type=float, default=60.0,
                   help="do not start another run with less than this left of the budget")
    r.add_argument("--smoke", action="store_true", help="shrink everything: checks the runner, not the methods")
    r.add_argument("--quiet", action="store_true")
    r.add_argument("overrides", nargs="*")
    c = sub.add_parser("record", help="record a finished run directory as a row")
    c.add_argument("dataset", choices=DATASETS)
    c.add_argument("row")
    c.add_argument("run_dir")
    c.add_argument("--seed", type=int, default=42)
    c.add_argument("--preset")
    c.add_argument("--overrides", nargs="*")
    g = sub.add_parser("render", help="regenerate the tables in docs/results.md")
    g.add_argument("--check", action="store_true")
    args, extra = ap.parse_known_args(argv)  # key=value overrides may follow the flags
    if extra and (args.cmd != "run" or any(e.startswith("-") or "=" not in e for e in extra)):
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides += extra
    return {"run": run_rows, "record": record_cmd, "render": render_cmd}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
