"""Evaluate a generative recommender: trie-constrained beam search over every user, then top-K metrics."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from sidrec import distributed as dist
from sidrec.data.splits import Examples
from sidrec.decoding.beam import constrained_beam_search
from sidrec.decoding.trie import SidTrie
from sidrec.eval.metrics import topk_metrics
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
    dataset order (tested in fp32). ``bf16``: autocast where it is fast (CUDA, or a CPU with AMX; see
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
    """Recall@K and NDCG@K of constrained beam search (METHODS 1.4); ``bf16`` as in ``generate_rankings``."""
    topk = max(ks)
    if topk > beam_size:
        raise ValueError(f"largest K ({topk}) exceeds the beam size ({beam_size})")
    ranked = generate_rankings(model, examples, item_sids, trie, beam_size, topk, batch_size, progress, desc, bf16)
    return topk_metrics(ranked, examples.target, list(ks))
