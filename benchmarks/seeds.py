"""Shared by the multi-seed table scripts (joint_table.py, tokenizers_table.py): the metrics they report and
their mean and spread over seeds."""

from __future__ import annotations

import statistics

METRICS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value) and count of per-seed values."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}
