"""Non-learned baselines on every dataset preset: popularity and last-item transitions (first-order Markov).

Both are computed from what precedes the held-out item (METHODS 1.3 leave-one-out, full ranking), exactly as
``sidrec evaluate`` reports them beside a model. They cost seconds, set the floor a learned model has to clear,
and show how much of a dataset's validation/test gap comes from the data rather than the model.

    PYTHONPATH=. python benchmarks/baselines.py --out benchmarks/results/baselines.json
    PYTHONPATH=. python benchmarks/baselines.py --train-only --out benchmarks/results/baselines_train_only.json

``--train-only`` counts, for the test part too, only the training part of every sequence (what a recommender
trained on the leave-one-out train split sees), instead of everything before the held-out item. Writes the raw metrics as JSON and prints a markdown table (R@10 and N@10, validation and test).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from sidrec.config import load_config
from sidrec.data.splits import leave_one_out
from sidrec.eval.metrics import baseline_metrics
from sidrec.pipeline import Run
from sidrec.utils import atomic_write_json

PRESETS = ("beauty", "sports", "toys", "instruments", "office", "movielens-100k")
KS = [5, 10, 20]


def baselines(preset: str, runs: Path, train_only: bool) -> dict[str, float]:
    cfg = load_config(preset, [f"run_dir={runs / preset}"])
    ds = Run(cfg, progress=False, log=lambda *_: None).stage_prepare()
    split = leave_one_out(ds, cfg.data.max_history)
    out: dict[str, float] = {}
    for part, ex, cut in (("valid", split.valid, 2), ("test", split.test, 2 if train_only else 1)):
        for name, m in baseline_metrics(ds.sequences, ex.history, ex.target, cut, ds.num_items, KS).items():
            out.update({f"{name}.{part}.{k}": v for k, v in m.items()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/baselines.json")
    ap.add_argument("--presets", nargs="+", default=list(PRESETS))
    ap.add_argument("--train-only", action="store_true", help="count only the training part for the test part too")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {p: baselines(p, Path(tmp), args.train_only) for p in args.presets}
    atomic_write_json(Path(args.out), results)
    print("| dataset | baseline | valid R@10 | valid N@10 | test R@10 | test N@10 | test/valid R@10 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for p, m in results.items():
        for name in ("popularity", "transition"):
            v, t = m[f"{name}.valid.recall@10"], m[f"{name}.test.recall@10"]
            print(f"| {p} | {name} | {v:.4f} | {m[f'{name}.valid.ndcg@10']:.4f} | {t:.4f} | "
                  f"{m[f'{name}.test.ndcg@10']:.4f} | {t / v:.2f} |")


if __name__ == "__main__":
    main()
