"""Leave-one-out split (METHODS 1.3): last item = test, second to last = validation, every earlier prefix = train.

Histories are stored as fixed-width, left-padded index arrays (-1 = padding, most recent item last) so that
training and evaluation never collate per sample in Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sidrec.data.dataset import Dataset


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


def _window(seq: np.ndarray, end: int, h: int) -> np.ndarray:
    """The last ``h`` items before position ``end``, left-padded with -1. (h,)"""
    out = np.full(h, -1, dtype=np.int64)
    part = seq[max(0, end - h) : end]
    if len(part):
        out[h - len(part) :] = part
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
    tr_h, tr_t, tr_u, va_h, va_t, te_h, te_t = [], [], [], [], [], [], []
    for u, seq in enumerate(ds.sequences):
        n = len(seq)
        if n < min_length:
            raise ValueError(
                f"{ds.name}: user {ds.user_keys[u]!r} has {n} interactions; leave-one-out needs >= {min_length}"
            )
        for end in range(1, n - 2):
            tr_h.append(_window(seq, end, max_history))
            tr_t.append(seq[end])
            tr_u.append(u)
        va_h.append(_window(seq, n - 2, max_history))
        va_t.append(seq[n - 2])
        te_h.append(_window(seq, n - 1, max_history))
        te_t.append(seq[n - 1])
    users = np.arange(ds.num_users, dtype=np.int64)

    def stack(rows: list[np.ndarray]) -> np.ndarray:
        return np.stack(rows).astype(np.int64) if rows else np.zeros((0, max_history), np.int64)

    return LeaveOneOut(
        train=Examples(stack(tr_h), np.asarray(tr_t, np.int64), np.asarray(tr_u, np.int64)),
        valid=Examples(stack(va_h), np.asarray(va_t, np.int64), users.copy()),
        test=Examples(stack(te_h), np.asarray(te_t, np.int64), users.copy()),
        max_history=max_history,
    )
