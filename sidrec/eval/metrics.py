"""Full-ranking top-K metrics for one held-out item per user (METHODS 1.4) and a popularity baseline."""

from __future__ import annotations

import numpy as np


def rank_of_target(ranked: np.ndarray, target: np.ndarray) -> np.ndarray:
    """0-based position of each user's target in its ranked list, or -1 if absent.

    Args:
        ranked: (U, K) item indices, best first (-1 = empty slot).
        target: (U,) the held-out item per user.
    """
    hit = ranked == target[:, None]  # (U, K)
    return np.where(hit.any(1), hit.argmax(1), -1)


def topk_metrics(ranked: np.ndarray, target: np.ndarray, ks: list[int]) -> dict[str, float]:
    """Recall@K (= hit rate with one target) and NDCG@K (binary relevance, ideal DCG = 1), averaged over users.

    Example:
        >>> topk_metrics(np.array([[3, 1], [2, 0]]), np.array([1, 5]), [1, 2])
        {'recall@1': 0.0, 'ndcg@1': 0.0, 'recall@2': 0.5, 'ndcg@2': 0.31546487678572877}
    """
    if ranked.ndim != 2 or len(ranked) != len(target):
        raise ValueError(f"ranked must be (U, K) with U = len(target); got {ranked.shape} and {target.shape}")
    if len(target) == 0:
        raise ValueError("no users to evaluate")
    pos = rank_of_target(ranked, target)
    out: dict[str, float] = {}
    for k in ks:
        if k > ranked.shape[1]:
            raise ValueError(f"K={k} exceeds the ranked list length {ranked.shape[1]}")
        hit = (pos >= 0) & (pos < k)
        gain = np.where(hit, 1.0 / np.log2(np.maximum(pos, 0) + 2.0), 0.0)
        out[f"recall@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(gain.mean())
    return out


def popularity_ranking(train_items: np.ndarray, num_items: int, num_users: int, k: int) -> np.ndarray:
    """Rank items by training-interaction count (ties by lower index); the same list for every user. (U, k)"""
    counts = np.bincount(train_items, minlength=num_items)
    order = np.lexsort((np.arange(num_items), -counts))[:k]
    return np.broadcast_to(order, (num_users, len(order))).copy()
