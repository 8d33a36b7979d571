"""Exact full-catalogue scoring over the trie (``score_catalogue``) against a slow per-item teacher-forcing
reference, and the beam's scores against it."""

import numpy as np
import pytest
import torch

from sidrec.data.splits import Examples
from sidrec.decoding.beam import constrained_beam_search, score_all_items, score_catalogue
from sidrec.decoding.trie import SidTrie
from sidrec.eval.evaluate import exact_evaluation, exact_rankings, generate_rankings
from sidrec.eval.metrics import topk_metrics
from sidrec.models.tiger import Tiger, TigerConfig

CASES = [([4, 3, 3], 0), ([5, 3, 4, 3], 1)]


def make_catalogue(num_items: int, level_sizes: list[int], seed: int) -> torch.Tensor:
    """Unique random SIDs whose prefixes are shared by several items (the last level tells them apart)."""
    gen = torch.Generator().manual_seed(seed)
    learned = torch.stack([torch.randint(k, (num_items,), generator=gen) for k in level_sizes[:-1]], dim=1)
    learned = torch.unique(learned, dim=0)
    group_sizes = torch.randint(1, level_sizes[-1] + 1, (len(learned),), generator=gen)
    dedup = torch.cat([torch.arange(int(size)) for size in group_sizes])
    return torch.cat([learned.repeat_interleave(group_sizes, dim=0), dedup[:, None]], dim=1)


def make_model(level_sizes: list[int], seed: int) -> Tiger:
    cfg = TigerConfig(level_sizes=level_sizes, d_model=32, num_heads=2, d_kv=16, d_ff=64, num_encoder_layers=1,
                      num_decoder_layers=2, dropout=0.0, user_buckets=0, max_history=4)
    return Tiger(cfg, generator=torch.Generator().manual_seed(seed)).eval()


def make_examples(num_users: int, num_items: int, seed: int, max_history: int = 4) -> Examples:
    rng = np.random.default_rng(seed)
    history = np.full((num_users, max_history), -1, np.int64)  # left-padded, lengths 1..max_history
    for i, n in enumerate(rng.integers(1, max_history + 1, num_users)):
        history[i, max_history - n :] = rng.integers(0, num_items, n)
    return Examples(history, rng.integers(0, num_items, num_users), np.arange(num_users))


def slow_scores(model: Tiger, ids: torch.Tensor, mask: torch.Tensor, sids: torch.Tensor) -> torch.Tensor:
    """(B, N): one teacher-forced forward pass per (user, item), summing log_softmax at the item's codes."""
    out = torch.empty(len(ids), len(sids))
    with torch.no_grad():
        for b in range(len(ids)):
            for i in range(len(sids)):
                logits = model(ids[b : b + 1], mask[b : b + 1], sids[i : i + 1])  # [(1, K_l)] per level
                out[b, i] = sum(lg.log_softmax(-1)[0, sids[i, lv]] for lv, lg in enumerate(logits))
    return out


@pytest.mark.parametrize("level_sizes, seed", CASES)
def test_exact_scores_equal_per_item_teacher_forcing(level_sizes, seed):
    sids = make_catalogue(30, level_sizes, seed)
    trie = SidTrie(sids, level_sizes)
    model = make_model(level_sizes, seed)
    ex = make_examples(5, len(sids), seed)
    hist = torch.as_tensor(ex.history)
    ids, mask = model.encoder_inputs(sids[hist.clamp(min=0)].masked_fill((hist < 0)[..., None], -1), None)
    reference = slow_scores(model, ids, mask, sids)
    for rows in (1, 10**6):  # one user per step, and every user in one step
        torch.testing.assert_close(score_catalogue(model, ids, mask, trie, rows=rows), reference, atol=1e-5, rtol=0)

    # The beam's items carry their exact scores; the exact best item scores at least the beam's best.
    beam = constrained_beam_search(model, ids, mask, trie, beam_size=3, topk=3)
    torch.testing.assert_close(beam.scores, reference.gather(1, beam.items), atol=1e-5, rtol=0)
    assert (reference.max(1).values >= beam.scores[:, 0] - 1e-6).all()


def test_exact_evaluation_counts_what_the_beam_misses():
    level_sizes = [5, 3, 4, 3]
    sids = make_catalogue(40, level_sizes, seed=2)
    trie = SidTrie(sids, level_sizes)
    model = make_model(level_sizes, seed=2)
    ex = make_examples(23, len(sids), seed=2)
    exact = exact_rankings(model, ex, sids, trie, topk=5, rows=30, progress=False, bf16=False)
    hist = torch.as_tensor(ex.history)
    ids, mask = model.encoder_inputs(sids[hist.clamp(min=0)].masked_fill((hist < 0)[..., None], -1), None)
    reference = score_all_items(model, ids, mask, sids)  # per-item teacher forcing (score_sids)
    np.testing.assert_allclose(reference.gather(1, torch.as_tensor(exact)).numpy(),
                               reference.topk(5, dim=1).values.numpy(), atol=1e-5)  # the top 5 by exact score

    # A beam as wide as the catalogue prunes nothing: no misses, and the beam's metrics are the exact ones.
    full = exact_evaluation(model, ex, sids, trie, beam_size=len(sids), ks=[2, 5], batch_size=4, progress=False,
                            bf16=False)
    assert full["beam_miss@5"] == full["target_beam_miss@5"] == 0.0 and full["users"] == 23
    wide = generate_rankings(model, ex, sids, trie, len(sids), 5, batch_size=4, progress=False, bf16=False)
    assert {k: full[k] for k in topk_metrics(wide, ex.target, [2, 5])} == topk_metrics(wide, ex.target, [2, 5])

    # A beam of 6 misses some of the exact top 5; the rates are recounted here by hand over its whole list.
    small = exact_evaluation(model, ex, sids, trie, beam_size=6, ks=[5], batch_size=4, progress=False, bf16=False)
    beam = generate_rankings(model, ex, sids, trie, 6, 6, batch_size=4, progress=False, bf16=False)
    pairs = [(u, i) for u in range(23) for i in exact[u]]
    missed = [i not in beam[u] for u, i in pairs]
    assert 0 < sum(missed) and small["beam_miss@5"] == pytest.approx(sum(missed) / len(pairs))
    with_target = [u for u in range(23) if ex.target[u] in exact[u]]
    lost = [u for u in with_target if ex.target[u] not in beam[u]]
    assert small["target_beam_miss@5"] == pytest.approx(len(lost) / len(with_target))
    assert small["recall@5"] == pytest.approx(len(with_target) / 23)

    sample = exact_evaluation(model, ex, sids, trie, beam_size=5, ks=[5], users=7, seed=1, progress=False, bf16=False)
    assert sample["users"] == 7
