"""Validation curves of training runs, against wall minutes and against training samples seen, in one PNG.

Reads the curve files that ``benchmarks/tiger_beauty.py --curve`` writes (one per candidate recipe). Wall minutes
depend on the machine (the label should say which); samples seen do not.

    PYTHONPATH=. python benchmarks/plot_curves.py --out docs/figures/beauty_curves.png \
        "batch 256, cosine 11 epochs (Xeon, AMX)=benchmarks/results/tiger_beauty_cpu_60min_curve.json" \
        "batch 512, cosine 24 epochs (EPYC, AVX512-BF16)=benchmarks/results/tiger_beauty_b512_cos24_curve.json"
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sidrec.utils import read_json  # noqa: E402


def samples_seen(epochs: list[dict]) -> list[float]:
    """Cumulative training samples (millions) from each epoch's minutes and samples/s."""
    out, total, last_min = [], 0.0, 0.0
    for e in epochs:
        total += (e["train_minutes"] - last_min) * 60 * e["samples_per_second"]
        last_min = e["train_minutes"]
        out.append(total / 1e6)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("curves", nargs="+", help="LABEL=PATH of a curve JSON")
    ap.add_argument("--metric", default="valid.ndcg@10")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    fig, (by_time, by_samples) = plt.subplots(1, 2, figsize=(11, 4))
    for spec in args.curves:
        label, path = spec.rsplit("=", 1)
        epochs = [e for e in read_json(path)["epochs"] if args.metric in e]
        y = [e[args.metric] for e in epochs]
        by_time.plot([e["train_and_valid_minutes"] for e in epochs], y, marker="o", label=label)
        by_samples.plot(samples_seen(epochs), y, marker="o", label=label)
    by_time.set_xlabel("wall minutes (training + validation)")
    by_samples.set_xlabel("training samples seen (millions)")
    for ax in (by_time, by_samples):
        ax.set_ylabel(f"{args.metric} (validation subset)")
        ax.grid(alpha=0.3)
    by_time.legend(fontsize=8)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
