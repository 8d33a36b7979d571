"""Codebook health of semantic IDs, for any tokenizer (``sidrec inspect RUN``).

Three views of one code matrix ``(N, L)``:
- per level usage, perplexity and dead codes, plus collisions (``codebook_health`` of the tokenizers);
- semantic locality: how often an item and its nearest neighbour by cosine in the embeddings the tokenizer was
  fit on share the first l codes, against random pairs (``prefix_sharing``, in ``sidrec.eval.locality``); good SIDs share far more with
  neighbours;
- the fit trajectory from ``tokenizer/fit_log.jsonl`` (``fit_trajectory``): usage per epoch (per level for
  RQ-KMeans, which fits level after level), so a collapse during training shows.

The statistics are pure functions; ``sidrec.report.inspect_run`` gathers them from a run directory; plots live
in ``sidrec.eval.plots``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sidrec.tokenizers import CONFIG_FILE, load_sids
from sidrec.utils import read_json


def read_fit_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``fit_log.jsonl`` (one JSON object per line); errors name the file and line."""
    path = Path(path)
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON: {e.msg}") from None
            if not isinstance(record, dict) or not isinstance(record.get("usage"), list):
                raise ValueError(f"{path}:{lineno}: expected an object with a 'usage' list")
            records.append(record)
    return records


def fit_trajectory(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Usage, perplexity, collisions and loss per logged step of a tokenizer fit.

    The step is ``epoch`` (gradient-trained tokenizers) or ``level`` (RQ-KMeans logs once per fitted level,
    its codes so far); ``usage[t]`` lists the usage of each level known at step t.

    Example:
        >>> t = fit_trajectory([{"epoch": 1, "usage": [0.5], "collision_rate": 0.2},
        ...                     {"epoch": 2, "usage": [0.9], "collision_rate": 0.1}])
        >>> t["usage_level1_first"], t["usage_level1_last"]
        (0.5, 0.9)
    """
    if not records:
        raise ValueError("fit_trajectory: no records")
    step = "epoch" if "epoch" in records[0] else "level" if "level" in records[0] else "step"
    steps = [r.get(step, i + 1) for i, r in enumerate(records)]
    return {
        "step": step,
        "steps": steps,
        "usage": [r["usage"] for r in records],
        "perplexity": [r.get("perplexity") for r in records],
        "collision_rate": [r.get("collision_rate") for r in records],
        "loss": [r.get("loss") for r in records],
        "usage_level1_first": records[0]["usage"][0],
        "usage_level1_last": records[-1]["usage"][0],
    }


def level_counts(codes: Tensor, level_sizes: list[int]) -> list[np.ndarray]:
    """Items per code, one ``(K_l,)`` array per level: the usage histogram."""
    return [torch.bincount(codes[:, level], minlength=k).numpy() for level, k in enumerate(level_sizes)]


def learned_codes(tokenizer_dir: str | Path) -> tuple[np.ndarray, list[int], str]:
    """A run's learned codes ``(N, L)`` (SIDs without the dedup token), their level sizes, the tokenizer name."""
    tdir = Path(tokenizer_dir)
    sids, sizes = load_sids(tdir)
    meta = read_json(tdir / CONFIG_FILE)
    # Fitted tokenizers always append the dedup token; imported SIDs record whether they did.
    num_levels = int(meta["num_levels"]) if "num_levels" in meta else sids.shape[1] - 1
    return sids[:, :num_levels], sizes[:num_levels], str(meta.get("name"))


def health_table(report: dict[str, Any]) -> str:
    """The report of ``inspect_run`` as plain-text tables."""
    h = report["codebook"]
    lines = [f"{report['run']}: tokenizer {report['tokenizer']}, {report['num_items']} items, "
             f"{len(report['level_sizes'])} levels", ""]
    head = f"{'level':>5} {'size':>6} {'used':>6} {'usage':>7} {'perplexity':>11} {'dead':>6}"
    lines += [head, "-" * len(head)]
    for level, k in enumerate(report["level_sizes"]):
        lines.append(f"{level + 1:>5} {k:>6} {k - h['dead_codes'][level]:>6} {h['usage'][level]:>7.3f} "
                     f"{h['perplexity'][level]:>11.1f} {h['dead_codes'][level]:>6}")
    lines += ["", f"collision rate {h['collision_rate']:.4f}, largest group {h['max_group']} items, "
              f"{h['unique_tuples']} unique code tuples"]
    ps = report["prefix_sharing"]
    if ps is not None:
        lines += ["", f"items sharing the first l codes ({ps['num_samples']} sampled items)"]
        head = f"{'l':>3} {'nearest neighbour':>18} {'random item':>12}"
        lines += [head, "-" * len(head)]
        for level, (nb, rnd) in enumerate(zip(ps["neighbour"], ps["random"])):
            lines.append(f"{level + 1:>3} {nb:>18.3f} {rnd:>12.3f}")
    fit = report["fit"]
    if fit is not None:
        last_rate = fit["collision_rate"][-1]
        line = (f"fit log: {len(fit['steps'])} {fit['step']}s; level-1 usage first "
                f"{fit['usage_level1_first']:.3f} -> last {fit['usage_level1_last']:.3f}")
        lines += ["", line + (f"; last collision rate {last_rate:.4f}" if last_rate is not None else "")]
    return "\n".join(lines)
