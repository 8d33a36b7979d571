"""Fast path vs reference path: our batched trie beam search against transformers' generate with a dict trie."""

import pytest
import torch

from sidrec.decoding.beam import constrained_beam_search
from sidrec.decoding.trie import SidTrie
from sidrec.models.tiger import START, Tiger, TigerConfig

pytest.importorskip("transformers")


from sidrec.decoding.hf_reference import dict_trie, hf_beam_search, tiger_to_hf  # noqa: E402

LEVELS = [8, 8, 8, 4]


def _problem(seed: int, num_items: int = 300, batch: int = 12, tie_heads: bool = False):
    g = torch.Generator().manual_seed(seed)
    cfg = TigerConfig(level_sizes=LEVELS, d_model=32, num_heads=2, d_kv=16, d_ff=64, num_encoder_layers=2,
                      num_decoder_layers=2, dropout=0.0, user_buckets=10, tie_heads=tie_heads)
    model = Tiger(cfg, generator=g).eval()
    codes = torch.unique(torch.stack([torch.randint(0, k, (4 * num_items,), generator=g) for k in LEVELS], -1), dim=0)
    sids = codes[torch.randperm(len(codes), generator=g)[:num_items]]  # (N, Lc) distinct, sparse in the last levels
    history = sids[torch.randint(0, num_items, (batch, 5), generator=g)]  # (B, H, Lc)
    history[: batch // 3, :2] = -1  # some left padding
    ids, mask = model.encoder_inputs(history, torch.arange(batch))
    return model, sids, ids, mask


@pytest.mark.parametrize(("seed", "tie_heads"), [(0, False), (1, False), (0, True)])
def test_beam_search_matches_transformers_generate(seed, tie_heads):
    """Same weights, same beam semantics (20 beams, equal lengths, length penalty 1): identical top-10 lists."""
    model, sids, ids, mask = _problem(seed, tie_heads=tie_heads)
    ours = constrained_beam_search(model, ids, mask, SidTrie(sids, LEVELS), beam_size=20, topk=10).items
    tokens = sids + model.level_offsets  # (N, Lc) vocabulary tokens
    theirs = hf_beam_search(tiger_to_hf(model), ids, mask, tokens, dict_trie(tokens), beam_size=20, topk=10)
    assert (theirs >= 0).all()
    assert torch.equal(ours, theirs)


def test_dict_trie_is_nested_by_level():
    trie = dict_trie(torch.tensor([[2, 5], [2, 6], [3, 5]]))
    assert trie == {2: {5: {}, 6: {}}, 3: {5: {}}}


def test_reference_refuses_a_drifted_transformers(monkeypatch):
    """If transformers' cached steps stop computing what a teacher-forced pass computes (as when 5.x renamed the
    cache argument and every cached step was masked as the wrong level), the reference must raise, not return
    other items. Simulated by perturbing the logits of cached steps only."""
    model, sids, ids, mask = _problem(0, batch=3)
    tokens = sids + model.level_offsets
    hf = tiger_to_hf(model)
    forward = type(hf).forward
    g = torch.Generator().manual_seed(0)

    def drifted_forward(self, **kwargs):
        out = forward(self, **kwargs)
        if out.logits.shape[1] == 1 and (kwargs["decoder_input_ids"] != START).all():  # a cached step
            out.logits = out.logits + torch.randn(out.logits.shape, generator=g)
        return out

    monkeypatch.setattr(type(hf), "forward", drifted_forward)
    with pytest.raises(RuntimeError, match="teacher-forced"):
        hf_beam_search(hf, ids, mask, tokens, dict_trie(tokens), beam_size=20, topk=10)
