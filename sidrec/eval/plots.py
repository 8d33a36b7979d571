"""Figures of a run: training curves and codebook health for the HTML report (``sidrec report``), and the PNG
files of a health report (``sidrec inspect``).

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot): no global state, no display needed;
``data_uri`` turns one into an inline ``data:image/png;base64,...`` string. matplotlib is the optional extra
``report`` and is imported only when a figure is made.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np

from sidrec.utils import atomic_write


def require_matplotlib():
    """matplotlib's ``Figure`` class, or an ImportError naming the extra to install."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(f"plots need matplotlib ({e}); install: pip install 'sidrec[report]'") from e
    return Figure


def new_figure(ncols: int, width: float = 4.2, height: float = 3.0):
    """A ``Figure`` with ``ncols`` side-by-side axes; returns ``(figure, [axes...])``.

    Example:
        >>> fig, (ax,) = new_figure(1)  # doctest: +SKIP
    """
    fig = require_matplotlib()(figsize=(width * ncols, height), dpi=100, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _integer_ticks(ax) -> None:
    """Whole numbers only on the x axis (epochs, levels)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def data_uri(fig) -> str:
    """The figure as a PNG ``data:`` URI, to inline in HTML without any external file.

    Example:
        >>> data_uri(training_curves(records))[:22]  # doctest: +SKIP
        'data:image/png;base64,'
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def training_curves(records: list[dict[str, Any]]):
    """Loss and learning rate over optimiser steps, and validation metrics over epochs.

    Args:
        records: ``metrics.jsonl`` records (the recommender's or SASRec's); ``"kind": "step"`` ones give the
            per-step curves, ``"epoch"`` ones (and records without a kind, from the ``train_log.jsonl`` of older
            runs) the per-epoch loss and the ``valid.*`` metrics. Records without ``lr`` (older SASRec logs) leave
            the learning-rate panel empty.
    """
    steps = [r for r in records if r.get("kind") == "step"]
    epochs = [r for r in records if r.get("kind", "epoch") == "epoch"]
    fig, (loss_ax, lr_ax, valid_ax) = new_figure(3)
    if steps:
        loss_ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=1, label="train (per log step)")
    loss_ax.plot([r["step"] for r in epochs], [r["loss"] for r in epochs], "o-", label="train (epoch mean)")
    loss_ax.set(title="training loss", xlabel="step", ylabel="cross-entropy")
    loss_ax.legend(fontsize="small")
    lr_source = [r for r in steps or epochs if "lr" in r]
    lr_ax.plot([r["step"] for r in lr_source], [r["lr"] for r in lr_source])
    lr_ax.set(title="learning rate", xlabel="step")
    names = sorted({k for r in epochs for k in r if k.startswith("valid.")})
    for name in names:
        points = [(r["epoch"], r[name]) for r in epochs if name in r]
        valid_ax.plot(*zip(*points), "o-", label=name.removeprefix("valid."))
    valid_ax.set(title="validation", xlabel="epoch")
    _integer_ticks(valid_ax)
    if names:
        valid_ax.legend(fontsize="small")
    return fig


def codebook_curves(fit_log: list[dict[str, Any]]):
    """Per-level code usage and perplexity along tokenizer training (``tokenizer/fit_log.jsonl``).

    Records carry ``usage`` and ``perplexity`` lists (one value per level); the x axis is ``epoch`` for
    gradient-trained tokenizers (RQ-VAE) and ``level`` for those fitted level by level (RQ-KMeans).
    """
    xkey = "epoch" if "epoch" in fit_log[0] else "level"
    num_levels = max(len(r["usage"]) for r in fit_log)
    fig, (usage_ax, ppl_ax) = new_figure(2)
    for level in range(num_levels):
        pts = [(r[xkey], r["usage"][level], r["perplexity"][level]) for r in fit_log if len(r["usage"]) > level]
        x, usage, ppl = zip(*pts)
        usage_ax.plot(x, usage, "o-" if len(x) < 30 else "-", label=f"level {level + 1}")
        ppl_ax.plot(x, ppl, "o-" if len(x) < 30 else "-", label=f"level {level + 1}")
    usage_ax.set(title="share of codes used", xlabel=f"tokenizer {xkey}", ylim=(0, 1.05))
    ppl_ax.set(title="code perplexity", xlabel=f"tokenizer {xkey}")
    usage_ax.legend(fontsize="small")
    _integer_ticks(usage_ax)
    _integer_ticks(ppl_ax)
    return fig


def code_usage_histogram(codes: np.ndarray, codebook_size: int):
    """Items per code at each level, codes sorted from most to least used (a flat line is a uniform codebook).

    Args:
        codes: ``(N, L)`` the learned codes of every item (the SIDs without their dedup token).
        codebook_size: K, codes per level.
    """
    n, num_levels = codes.shape
    fig, axes = new_figure(num_levels, width=3.6)
    for level, ax in enumerate(axes):
        counts = np.sort(np.bincount(codes[:, level], minlength=codebook_size))[::-1]  # (K,)
        ax.bar(np.arange(codebook_size), counts, width=0.9)
        ax.axhline(n / codebook_size, color="black", lw=0.8, ls="--", label="uniform")
        ax.set(title=f"level {level + 1}: {int((counts > 0).sum())}/{codebook_size} codes used",
               xlabel="codes, most used first", ylabel="items")
        ax.legend(fontsize="small")
    return fig


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))


def plot_usage_histograms(counts: list[np.ndarray], path: str | Path) -> Path:
    """One panel per level: items per code, codes sorted by count (a long flat tail of zeros = dead codes).

    Example:
        >>> plot_usage_histograms(level_counts(codes, sizes), "runs/demo/inspect/usage.png")  # doctest: +SKIP
    """
    figure = require_matplotlib()
    fig = figure(figsize=(7, 2.2 * len(counts)))
    for level, c in enumerate(counts):
        ax = fig.add_subplot(len(counts), 1, level + 1)
        ax.bar(np.arange(len(c)), np.sort(c)[::-1], width=1.0)
        used = int((c > 0).sum())
        ax.set_title(f"level {level + 1}: {used}/{len(c)} codes used", fontsize=9)
        ax.set_ylabel("items")
    fig.axes[-1].set_xlabel("codes, ranked by number of items")
    return _save(fig, Path(path))


def plot_prefix_sharing(sharing: dict[str, Any], path: str | Path) -> Path:
    """Share of item pairs with the same first l codes: nearest neighbours against random pairs."""
    figure = require_matplotlib()
    fig = figure(figsize=(5, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    lengths = np.arange(1, len(sharing["neighbour"]) + 1)
    ax.plot(lengths, sharing["neighbour"], marker="o", label="nearest neighbour (cosine)")
    ax.plot(lengths, sharing["random"], marker="s", label="random item")
    ax.set_xticks(lengths)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("prefix length l")
    ax.set_ylabel("share with the same first l codes")
    ax.legend(fontsize=8)
    return _save(fig, Path(path))


def plot_fit_trajectory(fit: dict[str, Any], path: str | Path) -> Path:
    """Code usage of each level per logged step of the tokenizer fit, and the collision rate."""
    figure = require_matplotlib()
    fig = figure(figsize=(7, 5))
    ax = fig.add_subplot(2, 1, 1)
    num_levels = max(len(u) for u in fit["usage"])
    for level in range(num_levels):
        points = [(s, u[level]) for s, u in zip(fit["steps"], fit["usage"]) if len(u) > level]
        ax.plot(*zip(*points), marker="." if len(points) < 50 else None, label=f"level {level + 1}")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("code usage")
    ax.legend(fontsize=8)
    ax2 = fig.add_subplot(2, 1, 2, sharex=ax)
    rates = [(s, r) for s, r in zip(fit["steps"], fit["collision_rate"]) if r is not None]
    if rates:
        ax2.plot(*zip(*rates), color="tab:red")
    ax2.set_ylabel("collision rate")
    ax2.set_xlabel(fit["step"])
    ax2.xaxis.get_major_locator().set_params(integer=True)  # epochs and levels are whole numbers
    return _save(fig, Path(path))


def save_health_plots(report: dict[str, Any], counts: list[np.ndarray], out_dir: str | Path) -> list[Path]:
    """Write ``usage_histogram.png``, ``prefix_sharing.png`` and ``fit_usage.png`` (those with data).

    Example:
        >>> save_health_plots(report, level_counts(codes, sizes), "runs/demo/inspect")  # doctest: +SKIP
    """
    require_matplotlib()  # fail before drawing anything when matplotlib is missing
    out = Path(out_dir)
    paths = [plot_usage_histograms(counts, out / "usage_histogram.png")]
    if report.get("prefix_sharing") is not None:
        paths.append(plot_prefix_sharing(report["prefix_sharing"], out / "prefix_sharing.png"))
    if report.get("fit") is not None:
        paths.append(plot_fit_trajectory(report["fit"], out / "fit_usage.png"))
    return paths
