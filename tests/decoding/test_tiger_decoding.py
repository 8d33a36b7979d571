import pytest
import torch

from sidrec.decoding.beam import constrained_beam_search, rank_all_items, score_all_items
from sidrec.decoding.trie import SidTrie
from sidrec.models.tiger import Tiger, TigerConfig


def make_catalogue(num_items: int, level_sizes: list[int], seed: int) -> torch.Tensor:
    """Random unique SIDs where groups of items share all learned codes and differ only in the dedup token."""
    gen = torch.Generator().manual_seed(seed)
    learned = torch.stack([torch.randint(k, (num_items,), generator=gen) for k in level_sizes[:-1]], dim=1)
    learned = torch.unique(learned, dim=0)  # sorted, so equal groups would be adjacent
    group_sizes = torch.randint(1, level_sizes[-1] + 1, (len(learned),), generator=gen)
    rows = learned.repeat_interleave(group_sizes, dim=0)
    dedup = torch.cat([torch.arange(int(size)) for size in group_sizes])
    sids = torch.cat([rows, dedup[:, None]], dim=1)
    assert (sids[:, -1] > 0).any(), "the catalogue must contain collisions"
    return sids


def make_model_and_users(
    level_sizes: list[int], sids: torch.Tensor, seed: int
) -> tuple[Tiger, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    cfg = TigerConfig(
        level_sizes=level_sizes,
        d_model=32,
        num_heads=2,
        d_kv=16,
        d_ff=64,
        num_encoder_layers=1,
        num_decoder_layers=1,
        dropout=0.0,
        user_buckets=0,
    )
    model = Tiger(cfg, generator=gen).eval()
    batch, length = 5, 4
    history = sids[torch.randint(len(sids), (batch, length), generator=gen)]  # (B, H, Lc)
    lengths = torch.randint(1, length + 1, (batch,), generator=gen)
    padding = torch.arange(length)[None, :] < length - lengths[:, None]  # (B, H) left padding
    history = history.masked_fill(padding[..., None], -1)
    ids, mask = model.encoder_inputs(history, None)
    return model, ids, mask


CASES = [([4, 3, 3], 0), ([5, 3, 4, 3], 1)]


@pytest.mark.parametrize("level_sizes, seed", CASES)
def test_tiger_full_beam_equals_exhaustive_ranking(level_sizes, seed):
    sids = make_catalogue(24, level_sizes, seed)
    trie = SidTrie(sids, level_sizes)
    model, ids, mask = make_model_and_users(level_sizes, sids, seed)
    n = len(sids)
    beam = constrained_beam_search(model, ids, mask, trie, beam_size=n, topk=n)
    exact = rank_all_items(model, ids, mask, trie, topk=n)
    assert torch.equal(beam.items, exact.items)
    assert torch.equal(beam.sids, sids[beam.items])
    torch.testing.assert_close(beam.scores, exact.scores, atol=1e-5, rtol=0)


@pytest.mark.parametrize("level_sizes, seed", CASES)
def test_tiger_small_beam_returns_valid_items_with_exact_scores(level_sizes, seed):
    sids = make_catalogue(24, level_sizes, seed)
    trie = SidTrie(sids, level_sizes)
    model, ids, mask = make_model_and_users(level_sizes, sids, seed)
    result = constrained_beam_search(model, ids, mask, trie, beam_size=3, topk=3)
    assert (result.items >= 0).all()
    assert torch.equal(result.sids, sids[result.items])
    assert (result.scores[:, :-1] >= result.scores[:, 1:]).all()
    reference = score_all_items(model, ids, mask, trie).gather(1, result.items)
    torch.testing.assert_close(result.scores, reference, atol=1e-5, rtol=0)
