"""Semantic locality of SIDs: do items that are close in embedding space share code prefixes?

``prefix_sharing`` is the statistic of ``sidrec inspect``; ``misalignment`` turns it into the warning the
tokenize stage gives when imported SIDs share prefixes with nearest neighbours no more often than with random
items (a file with shuffled keys, or one made for another dataset). Pure functions of tensors: the pipeline
imports them without the run-directory helpers of ``sidrec.eval.health``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def prefix_sharing(codes: Tensor, emb: Tensor, num_samples: int = 1000, seed: int = 0,
                   chunk: int | None = None) -> dict[str, Any]:
    """Share of items whose nearest neighbour (by cosine in ``emb``) has the same first l codes, l = 1..L, and
    the same share for random pairs.

    For a seeded sample of items, the neighbour of item i is ``argmax_{j != i} cos(emb_i, emb_j)`` and its
    random partner a uniform ``j != i``.

    Args:
        codes: ``(N, L)`` long, the learned codes (without the dedup token).
        emb: ``(N, D)`` float, the embeddings the tokenizer was fit on.
        num_samples: items sampled (all N when larger).
        seed: seeds the sample and the random partners.
        chunk: sampled items scored against all N at once; default: a ``(chunk, N)`` similarity matrix of at
            most 2^26 floats (256 MB), so that large catalogues fit in memory.

    Returns:
        ``{"num_samples": S, "neighbour": [L floats], "random": [L floats]}``; entry l - 1 is the share for
        prefix length l.

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
        >>> prefix_sharing(torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]]), emb)["neighbour"]
        [1.0, 0.0]
    """
    if codes.dim() != 2 or emb.dim() != 2 or codes.shape[0] != emb.shape[0]:
        raise ValueError(f"codes (N, L) and emb (N, D) must have the same N, got {tuple(codes.shape)} and "
                         f"{tuple(emb.shape)}")
    n = codes.shape[0]
    if n < 2:
        raise ValueError(f"prefix_sharing: needs at least 2 items, got {n}")
    if num_samples < 1:
        raise ValueError(f"num_samples: must be >= 1, got {num_samples}")
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randperm(n, generator=generator)[:num_samples]  # (S,)
    unit = F.normalize(emb.float(), dim=1)  # (N, D); a zero row stays zero: similarity 0 to everything
    neighbours = []
    chunk = chunk or max(1, min(1024, (1 << 26) // n))
    for rows in sample.split(chunk):
        sim = unit[rows] @ unit.T  # (c, N)
        sim[torch.arange(len(rows)), rows] = -float("inf")  # an item is not its own neighbour
        neighbours.append(sim.argmax(1))
    neighbour = torch.cat(neighbours)  # (S,)
    partner = (sample + torch.randint(1, n, (len(sample),), generator=generator)) % n  # uniform over j != i

    def shared(other: Tensor) -> list[float]:
        same = (codes[sample] == codes[other]).long()  # (S, L)
        return same.cumprod(dim=1).double().mean(0).tolist()  # prefix l shared iff the first l codes agree

    return {"num_samples": len(sample), "neighbour": shared(neighbour), "random": shared(partner)}


def misalignment(sharing: dict[str, Any]) -> str | None:
    """A warning when nearest neighbours share the first code hardly more often than random pairs, else None.

    "Hardly more" is a gap under three standard errors of the difference of two shares of ``num_samples``
    Bernoulli draws each at the random pairs' rate: good SIDs clear it by far, SIDs assigned to the wrong items
    fall inside it. The level judged is the first one whose codes random pairs share less than half the time
    (a level with one code tells nothing apart).

    Example:
        >>> misalignment({"num_samples": 1000, "neighbour": [0.012, 0.0], "random": [0.010, 0.0]})[:36]
        'nearest neighbours share code 1 1.2%'
    """
    s = sharing["num_samples"]
    for level, (nb, rnd) in enumerate(zip(sharing["neighbour"], sharing["random"])):
        if rnd >= 0.5:
            continue
        p = max(rnd, 1 / s)
        if nb - rnd >= 3 * math.sqrt(2 * p * (1 - p) / s):
            return None
        return (f"nearest neighbours share code {level + 1} {nb:.1%} of the time, random pairs {rnd:.1%} "
                f"({s} sampled items, neighbours by cosine in this run's embeddings): the SIDs look unrelated to "
                "the items")
    return None
