import math
from collections import Counter

import numpy as np
import pytest

from sidrec.eval.metrics import beam_misses, popularity_ranking, topk_metrics, transition_ranking


def test_hand_computed_cases():
    ranked = np.array([[7, 3, 9, 1, 2], [1, 2, 3, 4, 5], [5, 4, 3, 2, 1], [9, 8, 7, 6, 0]])
    target = np.array([7, 4, 1, 42])
    m = topk_metrics(ranked, target, [1, 5])
    # hits at ranks 1, 4 and 5; the fourth user misses
    assert m["recall@1"] == pytest.approx(1 / 4)
    assert m["ndcg@1"] == pytest.approx(1 / 4)
    assert m["recall@5"] == pytest.approx(3 / 4)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(5) + 1 / math.log2(6)) / 4)
    assert m["mrr@1"] == pytest.approx(1 / 4)
    assert m["mrr@5"] == pytest.approx((1 + 1 / 4 + 1 / 5) / 4)
    assert topk_metrics(ranked, target, [3])["mrr@3"] == pytest.approx(1 / 4)  # ranks 4 and 5 are beyond K


def _mrr_reference(ranked, target, k):
    """One user at a time: 1 / (1-based position of the target in the first k), 0 if it is not there."""
    total = 0.0
    for row, t in zip(ranked.tolist(), target.tolist()):
        top = row[:k]
        total += 1.0 / (top.index(t) + 1) if t in top else 0.0
    return total / len(target)


@pytest.mark.parametrize("seed", range(3))
def test_mrr_matches_reference(seed):
    rng = np.random.default_rng(seed)
    ranked = np.stack([rng.permutation(30)[:12] for _ in range(200)])  # no repeats within a list
    ranked[rng.random(ranked.shape) < 0.1] = -1  # empty slots
    target = rng.integers(0, 30, 200)
    m = topk_metrics(ranked, target, [1, 5, 12])
    for k in (1, 5, 12):
        assert m[f"mrr@{k}"] == pytest.approx(_mrr_reference(ranked, target, k))
    assert m["mrr@1"] == m["recall@1"] == m["ndcg@1"]


def test_beam_misses_hand_computed():
    beam = np.array([[4, 2, 7, 5], [1, 0, 3, -1], [9, 8, 6, 1]])  # the beam's whole lists (beam 4)
    exact = np.array([[4, 5, 2], [1, 6, 0], [6, 7, 9]])  # exact top 3
    target = np.array([5, 6, 3])
    m = beam_misses(beam, exact, target, [1, 2, 3])
    # top 1: 4, 1, 6 all in the beam lists (6 and 5 are beyond the beam's top K, still in its list)
    assert m["beam_miss@1"] == 0.0 and m["target_beam_miss@1"] == 0.0  # no target in the exact top 1
    # top 2: 5 (in the list at position 4), 6 (missed by user 1), 7 (missed by user 2): 2 of 6
    assert m["beam_miss@2"] == pytest.approx(2 / 6)
    assert m["target_beam_miss@2"] == pytest.approx(1 / 2)  # targets 5 (kept) and 6 (missed) in the exact top 2
    assert m["beam_miss@3"] == pytest.approx(2 / 9) and m["target_beam_miss@3"] == pytest.approx(1 / 2)
    with pytest.raises(ValueError, match="K=4"):
        beam_misses(beam, exact, target, [4])


def test_empty_slots_never_hit():
    m = topk_metrics(np.array([[-1, -1]]), np.array([3]), [2])
    assert m["recall@2"] == 0.0


def test_k_larger_than_list_is_an_error():
    with pytest.raises(ValueError, match="K=3"):
        topk_metrics(np.array([[1, 2]]), np.array([1]), [3])


def test_popularity_ranking_orders_by_count_then_index():
    ranked = popularity_ranking(np.array([2, 2, 1, 1, 0, 3, 3, 3]), 5, num_users=2, k=4)
    assert ranked.tolist() == [[3, 1, 2, 0], [3, 1, 2, 0]]


def _transition_reference(sequences, cut, last, num_items, k):
    """Dictionaries and sorting, one user at a time: the definition of the transition baseline."""
    kept = [list(s[: len(s) - cut]) for s in sequences]
    follows = Counter((a, b) for s in kept for a, b in zip(s, s[1:]))
    pop = Counter(i for s in kept for i in s)
    out = []
    for item in last:
        key = lambda j, item=item: (-follows[(item, j)] if item >= 0 else 0, -pop[j], j)  # noqa: E731
        out.append(sorted(range(num_items), key=key)[:k])
    return out


@pytest.mark.parametrize("seed", range(5))
def test_transition_ranking_matches_reference(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 30))
    seqs = [rng.integers(0, n, int(rng.integers(1, 12))) for _ in range(40)]
    last = rng.integers(-1, n, 25)
    for cut in (0, 1, 2):
        k = int(rng.integers(1, n + 1))
        fast = transition_ranking(seqs, cut, last, n, k)
        ref = _transition_reference(seqs, cut, last, n, k)
        assert fast.tolist() == ref, (seed, cut, k)
