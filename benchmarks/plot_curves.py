"""Validation curves of training runs, against wall minutes and against epochs, in one PNG.

Reads the curve files that ``benchmarks/tiger_beauty.py --curve`` writes (one per candidate recipe). Wall minutes
depend on the machine and its load (the label should say which; a run whose epochs were split across resumed calls
under load has no usable clock: mark it ``LABEL=PATH:noclock`` and it is drawn against epochs only); an epoch, one
pass over every training prefix, is the same amount of data in every recipe that trains on all prefixes.

    PYTHONPATH=. python benchmarks/plot_curves.py --out docs/figures/beauty_curves.png \
        "batch 256, cosine 11 epochs (Xeon, AMX)=benchmarks/results/tiger_beauty_cpu_60min_curve.json" \
        "batch 512, cosine 24 epochs (EPYC, AVX512-BF16)=benchmarks/results/tiger_beauty_b512_cos24_curve.json:noclock"
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sidrec.utils import read_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("curves", nargs="+", help="LABEL=PATH of a curve JSON")
    ap.add_argument("--metric", default="valid.ndcg@10")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    fig, (by_time, by_epoch) = plt.subplots(1, 2, figsize=(11, 4))
    for spec in args.curves:
        label, path = spec.rsplit("=", 1)
        clock = not path.endswith(":noclock")
        epochs = [e for e in read_json(path.removesuffix(":noclock"))["epochs"] if args.metric in e]
        y = [e[args.metric] for e in epochs]
        line = by_epoch.plot([e["epoch"] + 1 for e in epochs], y, marker="o", label=label)[0]
        if clock:
            by_time.plot([e["train_and_valid_minutes"] for e in epochs], y, marker="o", color=line.get_color())
    by_time.set_xlabel("wall minutes (training + validation)")
    by_epoch.set_xlabel("epochs (passes over every training prefix)")
    for ax in (by_time, by_epoch):
        ax.set_ylabel(f"{args.metric} (validation subset)")
        ax.grid(alpha=0.3)
    by_epoch.legend(fontsize=8)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
