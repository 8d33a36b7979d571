"""Shared by the multi-seed table scripts (joint_table.py, tokenizers_table.py): the metrics they report and
their mean and spread over seeds."""

from __future__ import annotations

import statistics

METRICS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")
# Non-learned rows every evaluation records (``sidrec evaluate``): the same for every seed and method of a dataset.
BASELINES = ("popularity", "transition")


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value) and count of per-seed values."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def baseline_rows(results: list[dict], **fields: str) -> list[dict]:
    """Table rows for the non-learned baselines, read from the first of ``results`` whose metrics hold them.

    Each row has ``fields`` (e.g. ``dataset=...``), ``method`` (the baseline), ``seeds = []`` and every metric as
    ``mean_std`` of its one value.
    """
    for r in results:
        if all(f"{b}.test.{m}" in r["metrics"] for b in BASELINES for m in METRICS):
            return [{**fields, "method": b, "seeds": [], **{m: mean_std([r["metrics"][f"{b}.test.{m}"]]) for m in METRICS}}
                    for b in BASELINES]
    return []
