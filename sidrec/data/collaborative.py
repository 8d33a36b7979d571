"""Collaborative item embeddings without a trained model: PPMI-weighted co-occurrence + truncated SVD.

For datasets with no item text or attributes (e.g. amazon-instruments here). Only the training part of every
sequence (all but the last two items, METHODS 1.3) is read, so validation and test items never leak in.
"""

from __future__ import annotations

import numpy as np
import torch

from sidrec.data.dataset import Dataset


def cooccurrence_embeddings(ds: Dataset, dim: int = 64, window: int = 3, seed: int = 0) -> np.ndarray:
    """(N, dim) float32 L2-normalised embeddings from item co-occurrence within ``window`` steps.

    Args:
        ds: the dataset; the last two items of every sequence are ignored (held out).
        dim: output dimension (capped at the number of items).
        window: two items co-occur when at most ``window`` positions apart in a user's training sequence.
        seed: seeds the randomised SVD.

    Example:
        >>> ds = Dataset("t", list("abcde"), ["u", "v"], [np.array([0, 1, 2, 3, 4]), np.array([1, 0, 2, 4, 3])])
        >>> cooccurrence_embeddings(ds, dim=2).shape
        (5, 2)
    """
    n = ds.num_items
    rows, cols = [], []
    for seq in ds.sequences:
        train = seq[:-2]
        for gap in range(1, window + 1):
            rows.append(train[:-gap])
            cols.append(train[gap:])
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    if n > 50_000:
        raise ValueError(f"cooccurrence embeddings build a dense {n} x {n} matrix; use another source for this size")
    a = torch.as_tensor(np.concatenate([r, c]))
    b = torch.as_tensor(np.concatenate([c, r]))
    counts = torch.zeros(n, n).index_put_((a, b), torch.ones(len(a)), accumulate=True)  # (N, N) symmetric
    total = counts.sum().clamp(min=1.0)
    row = counts.sum(1, keepdim=True).clamp(min=1.0)
    ppmi = torch.log(counts * total / (row * row.T)).clamp(min=0.0).nan_to_num(0.0, posinf=0.0, neginf=0.0)
    k = min(dim, n)
    torch.manual_seed(seed)
    u, s, _ = torch.svd_lowrank(ppmi, q=k, niter=4)
    emb = (u * s.sqrt())[:, :k]  # (N, k)
    emb = emb / emb.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return emb.numpy().astype(np.float32)
