"""PNG plots of a health report (``sidrec inspect``). Needs matplotlib (the ``report`` extra), imported lazily.

Figures are drawn with ``matplotlib.figure.Figure`` directly (no pyplot): no display, no global state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sidrec.utils import atomic_write


def require_matplotlib():
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(f"plots need matplotlib ({e}); install: pip install 'sidrec[report]'") from e
    return Figure


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
