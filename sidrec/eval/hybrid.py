"""A hybrid ranking beyond the TIGER paper: the generative model's beam mixed with a last-item transition prior.

On the Amazon 2014 sets most of what leave-one-out rewards is item-to-item succession (the transition row beats the
published TIGER on Beauty), and a beam of 20 can miss a frequent successor of the user's last item. The mixture

    p(i) = (1 - lam) * P_model(SID(i) | history) + lam * c(last, i) / c(last)

interpolates the two distributions as an n-gram language model is interpolated with a neural one. P_model is
``exp`` of the beam's log-probability for the items the beam found and 0 for the others (the beam's items carry
most of the model's mass; the rest is unknown without scoring every item); c counts how often item i directly
followed the user's last item, over the same data as the transition row. ``lam`` is chosen on validation
(``select_lambda``) and applied once to test. The result is its own row (``hybrid.*``), never reported as TIGER.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sidrec.eval.metrics import topk_metrics

LAMBDAS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class TransitionTable:
    """Successor counts c(src, dst) in CSR form: the successors of ``src`` are ``dst[ptr[src]:ptr[src + 1]]``,
    most frequent first, with their counts in ``count`` and the row totals in ``total`` (num_items,)."""

    ptr: np.ndarray
    dst: np.ndarray
    count: np.ndarray
    total: np.ndarray

    @classmethod
    def from_sequences(cls, sequences: list[np.ndarray], cut: int, num_items: int) -> TransitionTable:
        """Count transitions over every sequence without its last ``cut`` items (2 for validation, 1 for test),
        as the transition row does (``sidrec.eval.metrics.transition_ranking``).

        Example:
            >>> t = TransitionTable.from_sequences([np.array([0, 2, 1, 0, 2])], 0, 3)
            >>> t.successors(0, 5)
            (array([2]), array([1.]))
        """
        kept = [np.asarray(s[: len(s) - cut], np.int64) for s in sequences]
        src = np.concatenate([s[:-1] for s in kept if len(s) > 1] or [np.empty(0, np.int64)])
        dst = np.concatenate([s[1:] for s in kept if len(s) > 1] or [np.empty(0, np.int64)])
        pairs, count = np.unique(src * num_items + dst, return_counts=True)
        src, dst = pairs // num_items, pairs % num_items
        order = np.lexsort((dst, -count, src))  # per source: most frequent successor first, then lower index
        src, dst, count = src[order], dst[order], count[order]
        ptr = np.searchsorted(src, np.arange(num_items + 1))
        total = np.bincount(src, weights=count, minlength=num_items)
        return cls(ptr=ptr, dst=dst, count=count.astype(np.float64), total=total)

    def successors(self, item: int, m: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``m`` most frequent successors of ``item`` and their probabilities c(item, j) / c(item)."""
        if item < 0 or self.total[item] == 0:
            return np.empty(0, np.int64), np.empty(0)
        lo = self.ptr[item]
        hi = min(self.ptr[item + 1], lo + m)
        return self.dst[lo:hi], self.count[lo:hi] / self.total[item]


def mix_rankings(beam_items: np.ndarray, beam_scores: np.ndarray, last: np.ndarray, table: TransitionTable,
                 lam: float, k: int) -> np.ndarray:
    """Top-``k`` items (U, k) of the mixture over the beam's items and the last item's ``k`` top successors.

    Args:
        beam_items: (U, B) the beam's items, best first (-1 = empty slot).
        beam_scores: (U, B) their log P(SID) (-inf for empty slots).
        last: (U,) each user's most recent history item (-1 = none).
        table: transition counts over the data before the held-out item.
        lam: weight of the transition prior in [0, 1]; 0 gives the beam's own order.
        k: list length (slots left empty hold -1).

    Example:
        >>> t = TransitionTable.from_sequences([np.array([0, 2, 0, 2, 0, 1])], 0, 3)   # 0 -> 2 twice, 0 -> 1 once
        >>> beam = np.array([[1, 0]]), np.log(np.array([[0.5, 0.3]]))
        >>> mix_rankings(*beam, np.array([0]), t, 0.0, 2).tolist(), mix_rankings(*beam, np.array([0]), t, 0.5, 2).tolist()
        ([[1, 0]], [[1, 2]])
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    out = np.full((len(beam_items), k), -1, np.int64)
    model_p = np.exp(beam_scores.astype(np.float64))  # (U, B); exp(-inf) = 0 for empty slots
    for u in range(len(beam_items)):
        found = beam_items[u] >= 0
        items, p = beam_items[u][found], (1.0 - lam) * model_p[u][found]
        succ, q = table.successors(int(last[u]), k)
        if lam > 0 and len(succ):
            items = np.concatenate([items, succ])
            p = np.concatenate([p, lam * q])
            items, inverse = np.unique(items, return_inverse=True)  # an item in both lists gets both terms
            p = np.bincount(inverse, weights=p, minlength=len(items))
            first = np.full(len(items), len(inverse))
            np.minimum.at(first, inverse, np.arange(len(inverse)))  # ties keep the beam's order
            order = np.lexsort((first, -p))
            items = items[order]
        n = min(k, len(items))
        out[u, :n] = items[:n]
    return out


def select_lambda(beam_items: np.ndarray, beam_scores: np.ndarray, last: np.ndarray, target: np.ndarray,
                  table: TransitionTable, k: int = 10, lambdas: tuple[float, ...] = LAMBDAS) -> float:
    """The ``lam`` of ``lambdas`` with the best NDCG@k on these (validation) users; the smaller one on ties."""
    best, best_ndcg = lambdas[0], -1.0
    for lam in lambdas:
        ndcg = topk_metrics(mix_rankings(beam_items, beam_scores, last, table, lam, k), target, [k])[f"ndcg@{k}"]
        if ndcg > best_ndcg + 1e-12:
            best, best_ndcg = lam, ndcg
    return best
