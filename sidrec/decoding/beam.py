"""Trie-constrained beam search over semantic IDs, batched over users and beams, plus an exhaustive reference.

The model implements the decoding API

    model.start_decoding(ids (B, T), mask (B, T)) -> cache
    model.decode_step(cache, prev_codes (M,) | None, level) -> (logits (M, K_level), cache)
    cache.expand(n) / cache.reorder(index) -> cache   # beams share the encoder side (see DecoderCache)
    model.score_sids(ids, mask, sids (N, Lc)) -> (B, N) summed log-probs (teacher forcing)

``score_catalogue`` scores the whole catalogue exactly with the same API (the beam widened to the whole trie).

Scores are summed log_softmax over all K_l codes of each level, *not* renormalised over the valid children, so a
returned score is exactly the model's log-probability of that SID and equals `score_sids`. Only real catalogue
items are ever returned (the search is constrained to trie prefixes), unlike reference implementations that count
invalid generated codes as misses or match only the first levels. Call ``model.eval()`` first: dropout would make
the scores random.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sidrec.decoding.trie import SidTrie


@dataclass
class BeamResult:
    """Top-k items per user, best first.

    Slots beyond the number of items found (beam or catalogue smaller than topk) hold item -1, score -inf and
    SID codes -1.
    """

    items: Tensor  # (B, topk) item indices
    scores: Tensor  # (B, topk) log-probability of each item's SID
    sids: Tensor  # (B, topk, Lc) codes of each item's SID


def _pad(items: Tensor, scores: Tensor, sids: Tensor, topk: int) -> BeamResult:
    """Clear the slots with score -inf and pad the results (B, n <= topk) to (B, topk)."""
    found = scores > float("-inf")  # (B, n); also False for NaN
    items = items.masked_fill(~found, -1)
    scores = scores.masked_fill(~found, float("-inf"))
    sids = sids.masked_fill(~found[..., None], -1)
    missing = topk - items.shape[1]
    if missing > 0:
        batch, depth = sids.shape[0], sids.shape[2]
        items = torch.cat([items, items.new_full((batch, missing), -1)], dim=1)
        scores = torch.cat([scores, scores.new_full((batch, missing), float("-inf"))], dim=1)
        sids = torch.cat([sids, sids.new_full((batch, missing, depth), -1)], dim=1)
    return BeamResult(items=items, scores=scores, sids=sids)


@torch.no_grad()
def constrained_beam_search(
    model: Any, ids: Tensor, mask: Tensor, trie: SidTrie, beam_size: int = 20, topk: int = 10
) -> BeamResult:
    """Beam search over the SID levels, restricted to prefixes of catalogue SIDs, for a batch of users.

    Every level is one batched step for all users and beams: log_softmax of the logits plus the running beam
    score, invalid children set to -inf via the trie, top ``beam_size`` over (beam x K_l) per user, and the KV
    cache reordered to follow the surviving beams. Level 0 decodes a single beam per user; the cache is expanded
    to the beams only after it. The result is the best ``topk`` of the final beam, so at most ``beam_size``
    items per user are found; runs on the device of ``ids``.

    Args:
        model: a model with the decoding API in this module's docstring, in eval mode.
        ids: (B, T) encoder input tokens.
        mask: (B, T) True at real tokens.
        trie: the catalogue's valid SIDs; moved to the device of ``ids`` if needed.
        beam_size: beams kept per user at every level.
        topk: items returned per user.

    Returns:
        BeamResult with items (B, topk), scores (B, topk) = log P(SID), sids (B, topk, Lc), best first.

    Example:
        >>> from sidrec.models.tiger import Tiger, TigerConfig
        >>> cfg = TigerConfig(level_sizes=[3, 4, 2], d_model=16, num_heads=2, d_kv=8, d_ff=32, num_encoder_layers=1,
        ...                   num_decoder_layers=1, user_buckets=0)
        >>> model = Tiger(cfg, generator=torch.Generator().manual_seed(0)).eval()
        >>> sids = torch.tensor([[0, 1, 0], [0, 1, 1], [2, 0, 0], [1, 3, 0]])  # the catalogue: 4 items
        >>> ids, mask = model.encoder_inputs(sids[None, :2], torch.tensor([0]))  # one user who saw items 0, 1
        >>> result = constrained_beam_search(model, ids, mask, SidTrie(sids, cfg.level_sizes), beam_size=4, topk=4)
        >>> sorted(result.items[0].tolist())  # every beam ends at a catalogue item
        [0, 1, 2, 3]
        >>> torch.equal(result.items, rank_all_items(model, ids, mask, sids, topk=4).items)  # beams >= items: exact
        True
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    device = ids.device
    trie = trie.to(device)
    mask = mask.to(device)
    batch = ids.shape[0]
    user_rows = torch.arange(batch, device=device)[:, None]  # (B, 1)

    cache = model.start_decoding(ids, mask)
    scores = torch.zeros(batch, 1, device=device)  # (B, W) log-prob of each beam's prefix; W = 1 at level 0
    keys = torch.zeros(batch, 1, dtype=torch.long, device=device)  # (B, W) trie key of each beam's prefix
    codes = torch.zeros(batch, 1, 0, dtype=torch.long, device=device)  # (B, W, level) codes of each beam
    prev_codes = None
    for level, k in enumerate(trie.level_sizes):
        width = scores.shape[1]
        logits, cache = model.decode_step(cache, prev_codes, level)  # (B * W, K_l)
        if tuple(logits.shape) != (batch * width, k):
            raise ValueError(
                f"decode_step at level {level} returned logits of shape {tuple(logits.shape)}, "
                f"expected {(batch * width, k)} (level size {k} from the trie)"
            )
        log_probs = torch.log_softmax(logits.float(), dim=-1).view(batch, width, k)
        allowed = trie.valid_next(keys.view(-1), level).view(batch, width, k)
        candidates = (scores[..., None] + log_probs).masked_fill(~allowed, float("-inf"))  # (B, W, K_l)
        # Beams that found no valid child carry -inf and sort last; they are cleared at the end.
        scores, flat = candidates.view(batch, width * k).topk(min(beam_size, width * k), dim=-1)  # (B, W')
        parent, code = flat // k, flat % k  # (B, W') beam each candidate extends, and its new code
        keys = trie.extend(keys.gather(1, parent), code, level)
        codes = torch.cat([codes.gather(1, parent[..., None].expand(-1, -1, level)), code[..., None]], dim=-1)
        prev_codes = code.view(-1)  # (B * W')
        if level + 1 < trie.depth:
            if width == 1:  # one row per user so far (level 0): every new beam starts from it
                cache = cache.expand(scores.shape[1])
            else:  # gather each surviving beam's parent row; rows never leave their user
                cache = cache.reorder((user_rows * width + parent).view(-1))

    n = min(topk, scores.shape[1])
    items = trie.items(keys[:, :n].reshape(-1)).view(batch, n)
    return _pad(items, scores[:, :n], codes[:, :n], topk)


@torch.no_grad()
def score_catalogue(model: Any, ids: Tensor, mask: Tensor, trie: SidTrie, rows: int = 16384) -> Tensor:
    """Exact scores: the model's log-probability of every catalogue SID for every user, by teacher forcing.

    The same numbers as ``score_all_items``, computed over the trie instead of per item: each level is one
    ``decode_step`` over every catalogue prefix of that length (a beam search whose beam is the whole trie), so a
    prefix shared by many items is decoded once per user and each decoder position is computed once, with the
    KV cache. A user costs sum_l (prefixes of length l) one-token decoder rows, at most 1 + (Lc - 1) N and 0.6 N to
    1.7 N on Beauty's and the demo's SIDs (docs/results.md), where the per-item teacher forcing of ``score_sids``
    decodes N sequences of Lc tokens; the encoder K/V are shared by a user's rows.

    Args:
        model: a model with the decoding API in this module's docstring, in eval mode.
        ids: (B, T) encoder input tokens.
        mask: (B, T) True at real tokens.
        trie: the catalogue's SIDs; moved to the device of ``ids`` if needed.
        rows: decoder rows per step at most (users x prefixes of a level): users are scored in groups of
            ``max(1, rows // widest level)``.

    Returns:
        (B, N) float32 log-probabilities, column i = item i, equal to ``score_all_items`` (tested).

    Example:
        >>> from sidrec.models.tiger import Tiger, TigerConfig
        >>> model = Tiger(TigerConfig(level_sizes=[3, 2], d_model=16, num_heads=2, d_kv=8, d_ff=32, user_buckets=0))
        >>> sids = torch.tensor([[0, 0], [2, 1], [2, 0]])  # the catalogue: 3 items
        >>> ids, mask = model.encoder_inputs(sids[None, :1], torch.tensor([0]))
        >>> exact = score_catalogue(model.eval(), ids, mask, SidTrie(sids, [3, 2]))
        >>> torch.allclose(exact, score_all_items(model, ids, mask, sids), atol=1e-5)
        True
    """
    device = ids.device
    trie = trie.to(device)
    mask = mask.to(device)
    sids = trie.sids  # (N, Lc)
    # Level l decodes the prefixes of length l: the root, then trie.level_keys[l - 1] (sorted keys).
    prefixes = [torch.zeros(1, dtype=torch.long, device=device), *trie.level_keys[:-1]]
    group = max(1, rows // max(len(p) for p in prefixes))  # users per step
    out = []
    for start in range(0, ids.shape[0], group):
        users = len(ids[start : start + group])
        cache = model.start_decoding(ids[start : start + group], mask[start : start + group])
        scores = torch.zeros(users, len(sids), device=device)
        item_keys = torch.zeros(len(sids), dtype=torch.long, device=device)  # (N,) each item's prefix at level l
        prev_codes = None
        for level, k in enumerate(trie.level_sizes):
            nodes = prefixes[level]  # (P,) the cache holds one row per (user, prefix), user-major
            logits, cache = model.decode_step(cache, prev_codes, level)  # (users * P, K_l)
            log_probs = torch.log_softmax(logits.float(), dim=-1).view(users, len(nodes) * k)
            node = torch.searchsorted(nodes, item_keys)  # (N,) each item's prefix among the P
            scores += log_probs[:, node * k + sids[:, level]]
            item_keys = trie.extend(item_keys, sids[:, level], level)
            if level + 1 < trie.depth:
                children = prefixes[level + 1]  # (P',) keys of the prefixes one code longer
                parent = torch.searchsorted(nodes, torch.div(children, k, rounding_mode="floor"))  # (P',)
                user_rows = torch.arange(users, device=device)[:, None] * len(nodes)  # (users, 1)
                cache = cache.reorder((user_rows + parent).view(-1))  # (users * P') rows, user-major
                prev_codes = (children % k).repeat(users)  # (users * P',) the code each new row feeds
        out.append(scores)
    return torch.cat(out)


def _catalogue_sids(trie_or_sids: SidTrie | Tensor) -> Tensor:
    if isinstance(trie_or_sids, SidTrie):
        return trie_or_sids.sids
    sids = torch.as_tensor(trie_or_sids)
    if sids.dim() != 2:
        raise ValueError(f"sids: expected a (num_items, num_levels) tensor, got shape {tuple(sids.shape)}")
    return sids.long()


@torch.no_grad()
def score_all_items(
    model: Any, ids: Tensor, mask: Tensor, trie_or_sids: SidTrie | Tensor, chunk_size: int = 1024
) -> Tensor:
    """Exhaustive reference: the model's log-probability of every catalogue SID for every user.

    Args:
        model: a model with ``score_sids(ids, mask, sids)``, in eval mode.
        ids: (B, T) encoder input tokens.
        mask: (B, T) True at real tokens.
        trie_or_sids: a SidTrie or the (N, Lc) SID table.
        chunk_size: items scored per ``score_sids`` call, to bound memory.

    Returns:
        (B, N) float log-probabilities, column i = item i.

    Example:
        >>> from sidrec.models.tiger import Tiger, TigerConfig
        >>> model = Tiger(TigerConfig(level_sizes=[3, 2], d_model=16, num_heads=2, d_kv=8, d_ff=32, user_buckets=0))
        >>> sids = torch.tensor([[0, 0], [2, 1]])  # the catalogue: 2 items
        >>> ids, mask = model.encoder_inputs(sids[None, :1], torch.tensor([0]))
        >>> score_all_items(model.eval(), ids, mask, sids).shape  # (B, N)
        torch.Size([1, 2])
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    sids = _catalogue_sids(trie_or_sids).to(ids.device)
    mask = mask.to(ids.device)
    chunks = [model.score_sids(ids, mask, sids[i : i + chunk_size]) for i in range(0, len(sids), chunk_size)]
    return torch.cat(chunks, dim=1).float()


@torch.no_grad()
def rank_all_items(
    model: Any,
    ids: Tensor,
    mask: Tensor,
    trie_or_sids: SidTrie | Tensor,
    topk: int = 10,
    chunk_size: int = 1024,
) -> BeamResult:
    """The exact top-k items per user by scoring the whole catalogue (for tests and small catalogues).

    Args:
        model: a model with ``score_sids(ids, mask, sids)``, in eval mode.
        ids: (B, T) encoder input tokens.
        mask: (B, T) True at real tokens.
        trie_or_sids: a SidTrie or the (N, Lc) SID table.
        topk: items returned per user; slots beyond N are item -1 with score -inf.
        chunk_size: items scored per ``score_sids`` call.

    Returns:
        BeamResult with items (B, topk), scores (B, topk), sids (B, topk, Lc), best first.

    Example:
        >>> from sidrec.models.tiger import Tiger, TigerConfig
        >>> model = Tiger(TigerConfig(level_sizes=[3, 2], d_model=16, num_heads=2, d_kv=8, d_ff=32, user_buckets=0))
        >>> sids = torch.tensor([[0, 0], [2, 1]])  # the catalogue: 2 items
        >>> ids, mask = model.encoder_inputs(sids[None, :1], torch.tensor([0]))
        >>> rank_all_items(model.eval(), ids, mask, sids, topk=3).items[:, 2]  # 2 items: the third slot is empty
        tensor([-1])
    """
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    sids = _catalogue_sids(trie_or_sids).to(ids.device)
    all_scores = score_all_items(model, ids, mask, sids, chunk_size=chunk_size)  # (B, N)
    scores, items = all_scores.topk(min(topk, len(sids)), dim=-1)  # (B, n)
    return _pad(items, scores, sids[items], topk)
