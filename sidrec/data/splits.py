"""Leave-one-out split (METHODS 1.3): last item = test, second to last = validation, every earlier prefix = train.

Histories are stored as fixed-width, left-padded index arrays (-1 = padding, most recent item last) so that
training and evaluation never collate per sample in Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sidrec.data.dataset import Dataset

# Rows of history built per step of _windows.
_BLOCK = 1 << 16


@dataclass
class Examples:
    """``history[i]`` (H,) left-padded item indices (-1 = pad) -> ``target[i]``; ``user[i]`` indexes the dataset."""

    history: np.ndarray  # (S, H) int64
    target: np.ndarray  # (S,) int64
    user: np.ndarray  # (S,) int64

    def __len__(self) -> int:
        return len(self.target)

    def subset(self, idx: np.ndarray) -> Examples:
        return Examples(self.history[idx], self.target[idx], self.user[idx])


@dataclass
class LeaveOneOut:
    train: Examples
    valid: Examples
    test: Examples
    max_history: int


def _windows(items: np.ndarray, first: np.ndarray, end: np.ndarray, h: int) -> np.ndarray:
    """Row i: the last ``h`` items of a sequence before its position ``end[i]``, left-padded with -1. (S, h)

    ``items`` is every sequence concatenated and ``first[i]`` the offset of row i's sequence in it. Built with
    index arithmetic in row blocks, so the (block, h) position temporaries stay small at millions of rows.
    """
    out = np.empty((len(end), h), dtype=np.int64)
    back = np.arange(-h, 0)  # (h,) positions relative to end: -h .. -1
    for lo in range(0, len(end), _BLOCK):
        rel = end[lo : lo + _BLOCK, None] + back  # (B, h) position within the sequence
        pos = first[lo : lo + _BLOCK, None] + np.maximum(rel, 0)  # (B, h) clamped, masked below
        out[lo : lo + _BLOCK] = np.where(rel >= 0, items[pos], -1)
    return out


def leave_one_out(ds: Dataset, max_history: int = 20, min_length: int = 3) -> LeaveOneOut:
    """Split every user's sequence ``[i_1 .. i_n]``.

    test: ``i_1..i_{n-1} -> i_n``; validation: ``i_1..i_{n-2} -> i_{n-1}``; train: every prefix of
    ``i_1..i_{n-2}`` with at least one item -> its next item. Histories keep the last ``max_history`` items.

    Args:
        ds: the dataset.
        max_history: history cap (TIGER and LETTER use 20).
        min_length: users with fewer items raise an error naming the user (3 = one train, valid and test item).

    Example:
        >>> ds = Dataset("t", ["a", "b", "c", "d"], ["u"], [np.array([0, 1, 2, 3])])
        >>> s = leave_one_out(ds, max_history=2)
        >>> s.test.history.tolist(), s.test.target.tolist(), s.train.target.tolist()
        ([[1, 2]], [3], [1])
    """
    if max_history < 1:
        raise ValueError("max_history must be >= 1")
    lengths = np.fromiter((len(seq) for seq in ds.sequences), np.int64, ds.num_users)  # (U,)
    short = np.flatnonzero(lengths < max(min_length, 1))
    if len(short):
        u = int(short[0])
        raise ValueError(
            f"{ds.name}: user {ds.user_keys[u]!r} has {lengths[u]} interactions; leave-one-out needs >= {min_length}"
        )
    items = np.concatenate([np.asarray(seq, np.int64) for seq in ds.sequences]) if len(lengths) else lengths
    first = np.cumsum(lengths) - lengths  # (U,) offset of each user's sequence in items
    users = np.arange(ds.num_users, dtype=np.int64)
    # Train rows: user u contributes ends 1 .. n_u - 3, in user order then end order.
    per_user = np.maximum(lengths - 3, 0)  # (U,)
    tr_u = np.repeat(users, per_user)  # (S,)
    tr_end = np.arange(len(tr_u), dtype=np.int64) - np.repeat(np.cumsum(per_user) - per_user, per_user) + 1
    tr_first = first[tr_u]
    # A one-item sequence (only with min_length <= 1) has validation end -1, whose target is its last item.
    va_end, te_end = lengths - 2, lengths - 1
    train = Examples(_windows(items, tr_first, tr_end, max_history), items[tr_first + tr_end], tr_u)
    valid = Examples(_windows(items, first, va_end, max_history), items[first + va_end % lengths], users.copy())
    test = Examples(_windows(items, first, te_end, max_history), items[first + te_end], users.copy())
    return LeaveOneOut(train=train, valid=valid, test=test, max_history=max_history)
