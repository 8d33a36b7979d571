"""Evaluate a generative recommender: trie-constrained beam search over every user, then top-K metrics; optionally
the exact full-catalogue ranking beside it (``exact_evaluation``), to measure what the beam misses."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from sidrec import distributed as dist
from sidrec.data.splits import Examples
from sidrec.decoding.beam import constrained_beam_search, score_catalogue
from sidrec.decoding.trie import SidTrie
from sidrec.eval.metrics import beam_misses, topk_metrics
from sidrec.utils import bf16_autocast


def history_sids(item_sids: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """Map left-padded item histories (B, H) (-1 = pad) to SID histories (B, H, Lc) with -1 rows for padding."""
    sids = item_sids[history.clamp(min=0)]  # (B, H, Lc)
    return sids.masked_fill((history < 0).unsqueeze(-1), -1)


def trim_padding(history: torch.Tensor) -> torch.Tensor:
    """Drop the leading columns (B, H) -> (B, H') that are padding (-1) in every row: the batch then costs what its
    longest history costs. Left padding makes this exact: a model sees no difference (tested)."""
    longest = max(int((history >= 0).sum(1).max()), 1) if history.numel() else 1
    return history[:, history.shape[1] - min(longest, history.shape[1]) :]


def model_inputs(model, item_sids: torch.Tensor, history: torch.Tensor, users: torch.Tensor):
    """Encoder ids and mask for a batch, trimmed to its longest history; the user token is used only when the
    model has user buckets."""
    use_users = users if model.cfg.user_buckets > 0 else None
    return model.encoder_inputs(history_sids(item_sids, trim_padding(history)), use_users)


def decode_order(lengths: np.ndarray, of_rank: int | None = None) -> np.ndarray:
    """(U_r,) the examples one process decodes, in order: shortest histories first, so that consecutive batches
    are trimmed (``trim_padding``) to about one length.

    The length-sorted examples are interleaved across the processes (``dist.interleave``), not cut into contiguous
    slices (which gave one process every short history and another every long one): the processes' padded token
    counts then differ by at most one batch's (tested).

    Args:
        lengths: (U,) history length of every example.
        of_rank: the examples of that process instead (default: this one).
    """
    by_length = np.argsort(lengths, kind="stable")  # (U,) shortest histories first
    return by_length[dist.interleave(len(lengths), of_rank)]


@torch.inference_mode()
def generate_rankings(
    model,
    examples: Examples,
    item_sids: torch.Tensor,
    trie: SidTrie,
    beam_size: int = 20,
    topk: int = 20,
    batch_size: int = 512,
    progress: bool = True,
    desc: str = "decode",
    bf16: bool = True,
    with_scores: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Top-``topk`` items (U, topk) for every example via constrained beam search (-1 = empty slot); with
    ``with_scores`` also their log P(SID) (U, topk) (-inf for empty slots).

    Examples are decoded in order of history length, so that each batch is trimmed to histories of about one
    length; every user's beam search is independent of the others in its batch, so the rows are the same as in
    dataset order (tested in fp32). ``bf16``: autocast where it is fast (CUDA, or a CPU with native bf16; see
    ``sidrec.utils.bf16_autocast``). Under torchrun each process decodes an interleaved share of the examples
    (``decode_order``) and all of them get every row back.
    """
    device = item_sids.device
    was_training = model.training
    model.eval()
    use_bf16 = bf16_autocast(device, bf16)
    lengths = (examples.history >= 0).sum(1)
    mine = decode_order(lengths)
    out, out_scores = [], []
    for start in tqdm(range(0, len(mine), batch_size), desc=desc, disable=not progress, leave=False):
        rows = mine[start : start + batch_size]
        hist = torch.as_tensor(examples.history[rows], device=device)
        users = torch.as_tensor(examples.user[rows], device=device)
        ids, mask = model_inputs(model, item_sids, hist, users)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            res = constrained_beam_search(model, ids, mask, trie, beam_size=beam_size, topk=topk)
        out.append(res.items.cpu().numpy())
        out_scores.append(res.scores.float().cpu().numpy())
    model.train(was_training)
    every = np.concatenate([decode_order(lengths, r) for r in range(dist.world_size())])  # gather_rows's order
    ranked = np.empty((len(examples), topk), np.int64)
    ranked[every] = dist.gather_rows(np.concatenate(out) if out else np.zeros((0, topk), np.int64))
    if not with_scores:
        return ranked
    scores = np.empty((len(examples), topk), np.float32)
    scores[every] = dist.gather_rows(np.concatenate(out_scores) if out_scores else np.zeros((0, topk), np.float32))
    return ranked, scores


def evaluate(
    model,
    examples: Examples,
    item_sids: torch.Tensor,
    trie: SidTrie,
    beam_size: int = 20,
    ks: list[int] | tuple[int, ...] = (5, 10, 20),
    batch_size: int = 512,
    progress: bool = True,
    desc: str = "evaluate",
    bf16: bool = True,
) -> dict[str, float]:
    """Recall@K, NDCG@K and MRR@K of constrained beam search (METHODS 1.4); ``bf16`` as in ``generate_rankings``."""
    topk = max(ks)
    if topk > beam_size:
        raise ValueError(f"largest K ({topk}) exceeds the beam size ({beam_size})")
    ranked = generate_rankings(model, examples, item_sids, trie, beam_size, topk, batch_size, progress, desc, bf16)
    return topk_metrics(ranked, examples.target, list(ks))


@torch.inference_mode()
def exact_rankings(
    model,
    examples: Examples,
    item_sids: torch.Tensor,
    trie: SidTrie,
    topk: int = 20,
    rows: int = 16384,
    progress: bool = True,
    desc: str = "exact",
    bf16: bool = True,
) -> np.ndarray:
    """Top-``topk`` items (U, topk) for every example by the exact log-probability of every catalogue SID.

    Every item's SID is scored by teacher forcing (``score_catalogue``: one decoder pass over the SID trie per
    group of users) and the whole catalogue is ranked; nothing is pruned. Users go in order of history length
    and, under torchrun, interleaved across the processes, as in ``generate_rankings``.

    Args:
        model, examples, item_sids, trie: as in ``generate_rankings``.
        topk: items kept per user.
        rows: decoder rows per step (users x prefixes of one level).
        progress, desc: the progress bar.
        bf16: autocast as in ``generate_rankings`` (the beam's scores and these then round alike).
    """
    device = item_sids.device
    was_training = model.training
    model.eval()
    use_bf16 = bf16_autocast(device, bf16)
    widest = max([1, *(len(keys) for keys in trie.level_keys[:-1])])  # most prefixes any level decodes
    group = max(1, rows // widest)  # users per step
    lengths = (examples.history >= 0).sum(1)
    mine = decode_order(lengths)
    out = []
    for start in tqdm(range(0, len(mine), group), desc=desc, disable=not progress, leave=False):
        idx = mine[start : start + group]
        hist = torch.as_tensor(examples.history[idx], device=device)
        users = torch.as_tensor(examples.user[idx], device=device)
        ids, mask = model_inputs(model, item_sids, hist, users)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            scores = score_catalogue(model, ids, mask, trie, rows=rows)  # (group, N)
        out.append(scores.topk(min(topk, scores.shape[1]), dim=1).indices.cpu().numpy())
    model.train(was_training)
    every = np.concatenate([decode_order(lengths, r) for r in range(dist.world_size())])  # gather_rows's order
    width = min(topk, trie.num_items)
    ranked = np.full((len(examples), topk), -1, np.int64)
    ranked[every, :width] = dist.gather_rows(np.concatenate(out) if out else np.zeros((0, width), np.int64))
    return ranked


def exact_evaluation(
    model,
    examples: Examples,
    item_sids: torch.Tensor,
    trie: SidTrie,
    beam_size: int = 20,
    ks: list[int] | tuple[int, ...] = (5, 10, 20),
    batch_size: int = 512,
    users: int = 0,
    seed: int = 0,
    progress: bool = True,
    desc: str = "exact",
    bf16: bool = True,
) -> dict[str, float]:
    """Metrics of the exact full-catalogue ranking and what beam search misses of it, on the same users.

    The beam's list is its whole final beam (``beam_size`` items). Keys: ``recall@K``, ``ndcg@K``, ``mrr@K`` of
    the exact ranking; ``beam_miss@K`` and ``target_beam_miss@K`` (``sidrec.eval.metrics.beam_misses``: the
    share of the exact top-K items absent from the beam's list, and the share of the users whose target is in
    the exact top K but not in the beam's list); ``users``, how many were scored.

    The exact pass decodes every catalogue prefix for every user (``score_catalogue``; 2,870 one-token decoder rows
    per user on the demo, where beam 20 decodes 61: ~50x the beam's rows); ``users`` > 0 scores
    that many users drawn at random (``seed``) instead of all.

    Args:
        model, examples, item_sids, trie, beam_size, batch_size, progress, bf16: as in ``evaluate``; the exact
            pass steps ``batch_size x beam_size`` decoder rows, as many as a beam-search batch at its widest.
        ks: cut-offs of the metrics.
        users: users to score (0 = every example).
        seed: the draw of the users.
    """
    if users and users < len(examples):
        examples = examples.subset(np.sort(np.random.default_rng(seed).choice(len(examples), users, replace=False)))
    beam = generate_rankings(model, examples, item_sids, trie, beam_size, beam_size, batch_size, progress,
                             f"{desc} (beam)", bf16)
    exact = exact_rankings(model, examples, item_sids, trie, max(ks), batch_size * beam_size, progress, desc, bf16)
    return {**topk_metrics(exact, examples.target, list(ks)), **beam_misses(beam, exact, examples.target, list(ks)),
            "users": len(examples)}

