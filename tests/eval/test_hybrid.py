"""The beam mixed with a transition prior (``eval.transition_mix``) against a dense reference."""

import json

import numpy as np
import pytest

from sidrec.eval.hybrid import TransitionTable, mix_rankings, select_lambda
from sidrec.eval.metrics import topk_metrics


def random_case(seed: int, users: int = 40, items: int = 30, beam: int = 6):
    rng = np.random.default_rng(seed)
    sequences = [rng.integers(0, items, rng.integers(2, 12)) for _ in range(60)]
    beam_items = np.stack([rng.permutation(items)[:beam] for _ in range(users)])
    p = np.sort(rng.dirichlet(np.ones(beam + 1), users)[:, :beam], 1)[:, ::-1]  # a beam: best first
    beam_items[:3, -2:] = -1  # some short beams
    scores = np.where(beam_items >= 0, np.log(p), -np.inf)
    last = rng.integers(-1, items, users)
    return sequences, beam_items, scores, last, items


def dense_reference(sequences, beam_items, scores, last, items, lam, k):
    """Every item's mixture probability written out, then the top k among items with p > 0."""
    counts = np.zeros((items, items))
    for s in sequences:
        np.add.at(counts, (s[:-1], s[1:]), 1)
    out = np.full((len(last), k), -1)
    for u in range(len(last)):
        p = np.zeros(items)
        found = beam_items[u] >= 0
        p[beam_items[u][found]] += (1 - lam) * np.exp(scores[u][found])
        first = np.full(items, 10**6)  # ties: the beam's order, then the successors' (count, then index)
        first[beam_items[u][found][::-1]] = np.arange(found.sum())[::-1]
        if last[u] >= 0 and counts[last[u]].sum() > 0 and lam > 0:
            row = counts[last[u]]
            top = np.lexsort((np.arange(items), -row))[:k]  # the k most frequent successors
            top = top[row[top] > 0]
            p[top] += lam * row[top] / row.sum()
            first[top] = np.minimum(first[top], len(beam_items[u]) + np.arange(len(top)))
        ranked = [i for i in np.lexsort((first, -p)) if p[i] > 0]
        ranked += [i for i in beam_items[u] if i >= 0 and p[i] == 0]  # lam = 1: the beam fills in its order
        out[u, : min(k, len(ranked))] = ranked[:k]
    return out


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.7, 1.0])
def test_mixture_matches_the_dense_reference(lam):
    sequences, beam_items, scores, last, items = random_case(0)
    table = TransitionTable.from_sequences(sequences, 0, items)
    got = mix_rankings(beam_items, scores, last, table, lam, 5)
    want = dense_reference(sequences, beam_items, scores, last, items, lam, 5)
    assert got.tolist() == want.tolist()
    if lam == 0.0:
        assert np.array_equal(got, np.where(beam_items[:, :5] >= 0, beam_items[:, :5], -1))


def test_mixture_equals_reference_without_ties():
    # Transition counts that are all distinct per source, so the reference's order is unique.
    items = 8
    seq = np.array([0, 1, 0, 1, 0, 1, 0, 2, 0, 2, 0, 3])  # 0 -> 1 three times, 0 -> 2 twice, 0 -> 3 once
    table = TransitionTable.from_sequences([seq], 0, items)
    beam_items = np.array([[5, 3, 6, -1]])
    scores = np.array([[np.log(0.4), np.log(0.2), np.log(0.1), -np.inf]])
    for lam in (0.0, 0.25, 0.5, 0.9):
        got = mix_rankings(beam_items, scores, np.array([0]), table, lam, 4)
        want = dense_reference([seq], beam_items, scores, np.array([0]), items, lam, 4)
        assert got.tolist() == want.tolist(), lam


def test_lambda_is_chosen_on_the_users_it_is_given():
    items = 10
    seq = np.array([0, 7, 0, 7, 0, 7])  # 7 always follows 0
    table = TransitionTable.from_sequences([seq], 0, items)
    beam_items = np.tile(np.array([1, 2, 3]), (20, 1))
    scores = np.log(np.tile(np.array([0.5, 0.3, 0.1]), (20, 1)))
    last = np.zeros(20, np.int64)
    # Targets the beam ranks first: no weight on the prior; targets only the prior knows: some weight.
    assert select_lambda(beam_items, scores, last, np.ones(20, np.int64), table, k=1) == 0.0
    lam = select_lambda(beam_items, scores, last, np.full(20, 7), table, k=1)
    assert lam > 0.0
    mixed = mix_rankings(beam_items, scores, last, table, lam, 1)
    assert topk_metrics(mixed, np.full(20, 7), [1])["recall@1"] == 1.0


def test_a_run_reports_the_mix_as_its_own_row(tiny_args, capsys):
    from sidrec.cli import main

    run, args = tiny_args
    assert main(["run", "configs/ml-100k-demo.yaml", *args, "eval.transition_mix=true", "--quiet"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["hybrid.lambda"] <= 1.0
    for part in ("valid", "test"):
        assert 0.0 <= metrics[f"hybrid.{part}.ndcg@10"] <= 1.0
    # The model's own row is the beam alone: the mixture never replaces it.
    assert metrics["test.recall@10"] != metrics["hybrid.test.recall@10"] or metrics["hybrid.lambda"] == 0.0
    assert "+ transition mix" in capsys.readouterr().out
