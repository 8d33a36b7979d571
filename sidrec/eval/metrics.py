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
    """Recall@K (= hit rate with one target), NDCG@K (binary relevance, ideal DCG = 1) and MRR@K (1 / rank of the
    target, 0 when it is not in the top K), averaged over users.

    Example:
        >>> topk_metrics(np.array([[3, 1], [2, 0]]), np.array([1, 5]), [1, 2])
        {'recall@1': 0.0, 'ndcg@1': 0.0, 'mrr@1': 0.0, 'recall@2': 0.5, 'ndcg@2': 0.31546487678572877, 'mrr@2': 0.25}
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
        out[f"mrr@{k}"] = float(np.where(hit, 1.0 / (np.maximum(pos, 0) + 1.0), 0.0).mean())
    return out


def beam_misses(beam: np.ndarray, exact: np.ndarray, target: np.ndarray, ks: list[int]) -> dict[str, float]:
    """How often beam search misses items that the exact full-catalogue ranking puts in its top K.

    For each K in ``ks``:

    - ``beam_miss@K``: of all users' exact top-K items (U x K pairs), the share absent from the user's whole beam
      list (``beam``, all its columns): the exact ranking's items that the beam pruned before the last level.
    - ``target_beam_miss@K``: of the users whose held-out target is in their exact top K, the share whose target
      is absent from the beam list: the exact Recall@K that beam search loses (0 when no user has the target
      in the exact top K).

    Args:
        beam: (U, W) the beam search's items, best first (-1 = empty slot); W = the beam size, its whole list.
        exact: (U, >= max(ks)) items ranked by their exact log-probability, best first.
        target: (U,) the held-out item per user.
        ks: cut-offs of the exact ranking.

    Example:
        >>> beam_misses(np.array([[4, 2, 7], [1, 0, 3]]), np.array([[4, 5], [1, 0]]), np.array([5, 0]), [2])
        {'beam_miss@2': 0.25, 'target_beam_miss@2': 0.5}
    """
    if beam.shape[0] != exact.shape[0] or exact.shape[0] != len(target):
        raise ValueError(f"beam, exact and target need one row per user; got {beam.shape}, {exact.shape}, "
                         f"{target.shape}")
    out: dict[str, float] = {}
    for k in ks:
        if k > exact.shape[1]:
            raise ValueError(f"K={k} exceeds the exact list length {exact.shape[1]}")
        top = exact[:, :k]  # (U, K)
        in_beam = (top[:, :, None] == beam[:, None, :]).any(-1)  # (U, K)
        out[f"beam_miss@{k}"] = float(1.0 - in_beam.mean())
        at = top == target[:, None]  # (U, K): where the target sits in the exact top K
        has = at.any(1)  # (U,)
        missed = (at & ~in_beam).any(1)  # (U,) the target is in the exact top K but not in the beam list
        out[f"target_beam_miss@{k}"] = float(missed[has].mean()) if has.any() else 0.0
    return out


def popularity_ranking(train_items: np.ndarray, num_items: int, num_users: int, k: int) -> np.ndarray:
    """Rank items by training-interaction count (ties by lower index); the same list for every user. (U, k)"""
    counts = np.bincount(train_items, minlength=num_items)
    order = np.lexsort((np.arange(num_items), -counts))[:k]
    return np.broadcast_to(order, (num_users, len(order))).copy()


def transition_ranking(sequences: list[np.ndarray], cut: int, last: np.ndarray, num_items: int, k: int) -> np.ndarray:
    """First-order Markov baseline: rank items by how often they directly followed the user's last item. (U, k)

    Transitions are counted over every sequence without its last ``cut`` items (what precedes the held-out
    item); ties and users whose last item never had a successor fall back to popularity over the same items,
    then to the lower index. The list never repeats an item.

    Args:
        sequences: per user, the time-ordered item indices.
        cut: items dropped from the end of every sequence before counting (2 for validation, 1 for test).
        last: (U,) each evaluated user's most recent history item (-1 = empty history).
        num_items: catalogue size.
        k: list length.

    Example:
        >>> seqs = [np.array([0, 2, 1, 0, 2]), np.array([1, 0, 1])]
        >>> transition_ranking(seqs, 0, np.array([0, 1]), 3, 2).tolist()  # 0 -> 2 twice, 1 -> 0 twice
        [[2, 1], [0, 1]]
    """
    k = min(k, num_items)
    kept = [np.asarray(s[: len(s) - cut], np.int64) for s in sequences]
    src = np.concatenate([s[:-1] for s in kept if len(s) > 1] or [np.empty(0, np.int64)])
    dst = np.concatenate([s[1:] for s in kept if len(s) > 1] or [np.empty(0, np.int64)])
    pairs, counts = np.unique(src * num_items + dst, return_counts=True)  # sorted by source, then target
    src, dst = pairs // num_items, pairs % num_items
    seen = np.concatenate(kept)
    pop = np.bincount(seen, minlength=num_items)
    order = np.lexsort((dst, -pop[dst], -counts, src))  # per source: most frequent successor first
    src, dst = src[order], dst[order]
    popular = popularity_ranking(seen, num_items, 1, min(2 * k, num_items))[0]
    out = np.empty((len(last), k), dtype=np.int64)
    out[:] = popular[:k]
    for item in np.unique(last[last >= 0]):
        lo, hi = np.searchsorted(src, [item, item + 1])
        row = np.concatenate([dst[lo : min(hi, lo + k)], popular])
        _, first = np.unique(row, return_index=True)  # drop repeats, keeping each item's first position
        out[last == item] = row[np.sort(first)[:k]]
    return out


def baseline_metrics(sequences: list[np.ndarray], history: np.ndarray, target: np.ndarray, cut: int,
                     num_items: int, ks: list[int]) -> dict[str, dict[str, float]]:
    """``{"popularity": topk_metrics, "transition": topk_metrics}`` of the two non-learned baselines.

    Both count only the sequences without their last ``cut`` items (2 for validation, 1 for test: what precedes
    the held-out item).

    Args:
        sequences: per user, the time-ordered item indices.
        history: (U, H) left-padded histories (-1 = pad) of the evaluated users, most recent item last.
        target: (U,) their held-out items.
        cut: items dropped from the end of every sequence before counting.
        num_items: catalogue size.
        ks: cut-offs of the metrics.
    """
    k = max(ks)
    seen = np.concatenate([s[: len(s) - cut] for s in sequences])
    ranked = {"popularity": popularity_ranking(seen, num_items, len(target), k),
              "transition": transition_ranking(sequences, cut, history[:, -1], num_items, k)}
    return {name: topk_metrics(r, target, ks) for name, r in ranked.items()}
