from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from sidrec.decoding.beam import constrained_beam_search, rank_all_items, score_all_items
from sidrec.decoding.trie import SidTrie

VOCAB = 50


@dataclass
class ToyCache:
    hidden: Tensor  # (M, D) GRU state
    context: Tensor  # (M, D) pooled encoder input
    inputs: Tensor  # (M, t, D) decoder inputs so far; grows by one step per decode_step, like a KV cache

    def reorder(self, index: Tensor) -> ToyCache:
        return ToyCache(self.hidden[index], self.context[index], self.inputs[index])

    def expand(self, n: int) -> ToyCache:
        return self.reorder(torch.arange(len(self.hidden)).repeat_interleave(n))


class ToyModel(nn.Module):
    """A tiny random encoder-decoder with the decoding API; logits depend on the encoder input and whole prefix."""

    def __init__(self, level_sizes: list[int], dim: int = 16, seed: int = 0):
        super().__init__()
        self.token_emb = nn.Embedding(VOCAB, dim)
        self.code_emb = nn.ModuleList(nn.Embedding(k, dim) for k in level_sizes[:-1])
        self.start = nn.Parameter(torch.zeros(dim))
        self.cell = nn.GRUCell(dim, dim)
        self.heads = nn.ModuleList(nn.Linear(dim, k) for k in level_sizes)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))

    def _logits(self, hidden: Tensor, context: Tensor, inputs: Tensor, level: int) -> Tensor:
        return self.heads[level](torch.tanh(hidden + inputs.mean(1) + context))

    def _context(self, ids: Tensor, mask: Tensor) -> Tensor:
        weights = mask.float()[..., None]  # (B, T, 1)
        return (self.token_emb(ids) * weights).sum(1) / weights.sum(1).clamp(min=1)  # (B, D)

    def start_decoding(self, ids: Tensor, mask: Tensor) -> ToyCache:
        context = self._context(ids, mask)
        return ToyCache(torch.tanh(context), context, context.new_zeros(len(context), 0, context.shape[1]))

    def decode_step(self, cache: ToyCache, prev_codes: Tensor | None, level: int) -> tuple[Tensor, ToyCache]:
        rows = len(cache.hidden)
        x = self.start.expand(rows, -1) if level == 0 else self.code_emb[level - 1](prev_codes)  # (M, D)
        inputs = torch.cat([cache.inputs, x[:, None]], dim=1)
        hidden = self.cell(x, cache.hidden)
        return self._logits(hidden, cache.context, inputs, level), ToyCache(hidden, cache.context, inputs)

    def score_sids(self, ids: Tensor, mask: Tensor, sids: Tensor) -> Tensor:
        # Teacher forcing for every (user, item) pair at once, without the cache: an independent code path.
        batch, num = len(ids), len(sids)
        context = self._context(ids, mask).repeat_interleave(num, dim=0)  # (B * N, D)
        targets = sids.repeat(batch, 1)  # (B * N, Lc)
        starts = self.start.expand(batch * num, 1, -1)
        codes = [emb(targets[:, level])[:, None] for level, emb in enumerate(self.code_emb)]
        inputs = torch.cat([starts, *codes], dim=1)  # (B * N, Lc, D)
        hidden, total = torch.tanh(context), context.new_zeros(batch * num)
        for level in range(sids.shape[1]):
            hidden = self.cell(inputs[:, level], hidden)
            logits = self._logits(hidden, context, inputs[:, : level + 1], level)
            total += torch.log_softmax(logits, dim=-1).gather(1, targets[:, level : level + 1]).squeeze(1)
        return total.view(batch, num)


def make_catalogue(num_items: int, level_sizes: list[int], seed: int) -> Tensor:
    """Random SIDs whose learned codes (all levels but the last) collide; the last level is the dedup token."""
    gen = torch.Generator().manual_seed(seed)
    # Leave the last code of every learned level unused, so the model can favour codes that are never valid.
    learned = torch.stack(
        [torch.randint(k - 1, (num_items,), generator=gen) for k in level_sizes[:-1]], dim=1
    )
    counts: dict[tuple[int, ...], int] = {}
    dedup = []
    for row in learned.tolist():
        dedup.append(counts.get(tuple(row), 0))
        counts[tuple(row)] = dedup[-1] + 1
    sids = torch.cat([learned, torch.tensor(dedup)[:, None]], dim=1)
    sids = sids[sids[:, -1] < level_sizes[-1]]  # drop the few items of over-full groups
    assert (sids[:, -1] > 0).any(), "the catalogue must contain collisions"
    return sids


def make_users(batch: int, seed: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(VOCAB, (batch, 7), generator=gen)
    lengths = torch.randint(1, 8, (batch,), generator=gen)
    mask = torch.arange(7)[None, :] >= 7 - lengths[:, None]  # left-padded histories
    return ids, mask


def favour_invalid_codes(model: ToyModel) -> None:
    """Make the never-valid last code of each learned level likely, so unconstrained decoding would pick it."""
    with torch.no_grad():
        for head in model.heads[:-1]:
            head.bias[-1] += 4.0


CASES = [([4, 3, 5], 30, 0), ([5, 3, 4, 6], 60, 1), ([3, 6, 2, 3], 25, 2)]


@pytest.mark.parametrize("level_sizes, num_items, seed", CASES)
def test_full_beam_equals_exhaustive_ranking(level_sizes, num_items, seed):
    sids = make_catalogue(num_items, level_sizes, seed)
    trie = SidTrie(sids, level_sizes)
    model = ToyModel(level_sizes, seed=seed).eval()
    favour_invalid_codes(model)
    ids, mask = make_users(6, seed)
    n = len(sids)
    beam = constrained_beam_search(model, ids, mask, trie, beam_size=n, topk=n)
    exact = rank_all_items(model, ids, mask, trie, topk=n)
    assert torch.equal(beam.items, exact.items)
    assert torch.equal(beam.sids, sids[beam.items])
    torch.testing.assert_close(beam.scores, exact.scores, atol=1e-5, rtol=0)
    # Scores are unrenormalised log-probs: the whole catalogue has total probability below 1.
    assert (beam.scores.exp().sum(1) < 1).all()


@pytest.mark.parametrize("level_sizes, num_items, seed", CASES)
def test_small_beam_returns_valid_items_with_exact_scores(level_sizes, num_items, seed):
    sids = make_catalogue(num_items, level_sizes, seed)
    trie = SidTrie(sids, level_sizes)
    model = ToyModel(level_sizes, seed=seed).eval()
    favour_invalid_codes(model)
    ids, mask = make_users(6, seed)
    result = constrained_beam_search(model, ids, mask, trie, beam_size=3, topk=3)
    assert result.items.shape == (6, 3) and result.sids.shape == (6, 3, len(level_sizes))
    assert (result.items >= 0).all()
    assert torch.equal(result.sids, sids[result.items])
    assert torch.equal(
        trie.items(trie.encode(result.sids.view(-1, len(level_sizes)))).view(6, 3), result.items
    )
    assert all(len(set(row)) == 3 for row in result.items.tolist())
    assert (result.scores[:, :-1] >= result.scores[:, 1:]).all()
    reference = score_all_items(model, ids, mask, trie).gather(1, result.items)
    torch.testing.assert_close(result.scores, reference, atol=1e-5, rtol=0)


def test_batched_search_equals_per_user_search():
    level_sizes = [5, 3, 4, 6]
    trie = SidTrie(make_catalogue(60, level_sizes, seed=3), level_sizes)
    model = ToyModel(level_sizes, seed=3).eval()
    ids, mask = make_users(5, seed=3)
    batched = constrained_beam_search(model, ids, mask, trie, beam_size=4, topk=4)
    for user in range(5):
        single = constrained_beam_search(model, ids[user : user + 1], mask[user : user + 1], trie, 4, 4)
        assert torch.equal(single.items[0], batched.items[user])
        torch.testing.assert_close(single.scores[0], batched.scores[user], atol=1e-5, rtol=0)


def test_one_decode_step_per_level_and_single_first_beam():
    level_sizes = [5, 3, 4, 6]
    trie = SidTrie(make_catalogue(60, level_sizes, seed=4), level_sizes)
    model = ToyModel(level_sizes, seed=4).eval()
    rows = []
    decode_step = model.decode_step

    def counting_step(cache, prev_codes, level):
        rows.append(len(cache.hidden))
        return decode_step(cache, prev_codes, level)

    model.decode_step = counting_step
    ids, mask = make_users(3, seed=4)
    constrained_beam_search(model, ids, mask, trie, beam_size=4, topk=2)
    # Level 0 decodes one beam per user; the first level has only 5 codes, at most 4 valid.
    assert rows[0] == 3 and len(rows) == 4
    assert rows[1] <= 3 * 4 and rows[2:] == [3 * 4, 3 * 4]


def test_topk_beyond_catalogue_is_padded():
    level_sizes = [3, 2, 4]
    sids = torch.tensor([[0, 1, 0], [0, 1, 1], [2, 0, 0]])
    trie = SidTrie(sids, level_sizes)
    model = ToyModel(level_sizes, seed=5).eval()
    ids, mask = make_users(2, seed=5)
    for result in (
        constrained_beam_search(model, ids, mask, trie, beam_size=20, topk=10),
        rank_all_items(model, ids, mask, sids, topk=10),
    ):
        assert result.items.shape == (2, 10) and result.sids.shape == (2, 10, 3)
        assert sorted(result.items[:, :3].tolist()[0]) == [0, 1, 2]
        assert (result.items[:, 3:] == -1).all() and (result.sids[:, 3:] == -1).all()
        assert torch.isfinite(result.scores[:, :3]).all()
        assert (result.scores[:, 3:] == float("-inf")).all()


def test_topk_beyond_beam_is_padded():
    level_sizes = [4, 3, 5]
    trie = SidTrie(make_catalogue(30, level_sizes, seed=6), level_sizes)
    model = ToyModel(level_sizes, seed=6).eval()
    ids, mask = make_users(2, seed=6)
    result = constrained_beam_search(model, ids, mask, trie, beam_size=2, topk=5)
    assert (result.items[:, :2] >= 0).all() and (result.items[:, 2:] == -1).all()
    assert (result.scores[:, 2:] == float("-inf")).all()


def test_invalid_arguments_rejected():
    level_sizes = [3, 2, 4]
    trie = SidTrie(torch.tensor([[0, 1, 0], [2, 0, 0]]), level_sizes)
    model = ToyModel(level_sizes).eval()
    ids, mask = make_users(1, seed=0)
    with pytest.raises(ValueError, match="beam_size"):
        constrained_beam_search(model, ids, mask, trie, beam_size=0)
    with pytest.raises(ValueError, match="level size 3"):
        constrained_beam_search(ToyModel([4, 2, 4]).eval(), ids, mask, trie)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    level_sizes = [5, 3, 4, 6]
    trie = SidTrie(make_catalogue(60, level_sizes, seed=7), level_sizes)
    model = ToyModel(level_sizes, seed=7).eval()
    ids, mask = make_users(4, seed=7)
    cpu = constrained_beam_search(model, ids, mask, trie, beam_size=5, topk=5)
    gpu = constrained_beam_search(model.cuda(), ids.cuda(), mask.cuda(), trie, beam_size=5, topk=5)
    assert gpu.items.device.type == "cuda"
    assert torch.equal(gpu.items.cpu(), cpu.items)
    torch.testing.assert_close(gpu.scores.cpu(), cpu.scores, atol=1e-4, rtol=0)
