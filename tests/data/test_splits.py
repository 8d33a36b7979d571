import numpy as np
import pytest

from sidrec.data import splits
from sidrec.data.dataset import Dataset
from sidrec.data.splits import leave_one_out


def _ds(seqs):
    n = max(max(s) for s in seqs) + 1
    return Dataset("t", [str(i) for i in range(n)], [f"u{u}" for u in range(len(seqs))],
                   [np.array(s, dtype=np.int64) for s in seqs])


def test_leave_one_out_matches_methods_1_3():
    ds = _ds([[0, 1, 2, 3, 4], [5, 6, 7]])
    s = leave_one_out(ds, max_history=3)
    # user 0: train prefixes of [0,1,2] -> 1, 2; valid [0,1,2] -> 3; test [.., 3] -> 4 (history capped at 3)
    assert s.train.target.tolist() == [1, 2]
    assert s.train.history.tolist() == [[-1, -1, 0], [-1, 0, 1]]
    assert s.valid.history.tolist() == [[0, 1, 2], [-1, -1, 5]]
    assert s.valid.target.tolist() == [3, 6]
    assert s.test.history.tolist() == [[1, 2, 3], [-1, 5, 6]]
    assert s.test.target.tolist() == [4, 7]
    assert s.train.user.tolist() == [0, 0] and s.test.user.tolist() == [0, 1]


def _reference_leave_one_out(ds, max_history, min_length):
    """The original per-row loop (one window array per row, then stacked): the slow path kept as the oracle."""

    def window(seq, end):
        out = np.full(max_history, -1, dtype=np.int64)
        part = seq[max(0, end - max_history) : end]
        if len(part):
            out[max_history - len(part) :] = part
        return out

    rows = {"train": ([], [], []), "valid": ([], [], []), "test": ([], [], [])}
    for u, seq in enumerate(ds.sequences):
        n = len(seq)
        assert n >= min_length
        for end in range(1, n - 2):
            for part, value in zip(rows["train"], (window(seq, end), seq[end], u)):
                part.append(value)
        for name, end in (("valid", n - 2), ("test", n - 1)):
            for part, value in zip(rows[name], (window(seq, end), seq[end], u)):
                part.append(value)
    out = {}
    for name, (h, t, us) in rows.items():
        hist = np.stack(h).astype(np.int64) if h else np.zeros((0, max_history), np.int64)
        out[name] = (hist, np.asarray(t, np.int64), np.asarray(us, np.int64))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_split_equals_per_row_reference(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    min_length = [3, 1][seed % 2]
    # Lengths from the minimum to well past the history cap; a small block forces several row blocks.
    seqs = [list(rng.integers(0, 40, rng.integers(min_length, 35))) for _ in range(rng.integers(1, 60))]
    max_history = int(rng.choice([1, 2, 5, 20]))
    monkeypatch.setattr(splits, "_BLOCK", 7)
    got = splits.leave_one_out(_ds(seqs), max_history=max_history, min_length=min_length)
    want = _reference_leave_one_out(_ds(seqs), max_history, min_length)
    for name in ("train", "valid", "test"):
        ex = getattr(got, name)
        for arr, ref in zip((ex.history, ex.target, ex.user), want[name]):
            assert arr.dtype == ref.dtype == np.int64 and arr.shape == ref.shape
            assert np.array_equal(arr, ref)


def test_split_of_no_users_is_empty():
    s = leave_one_out(Dataset("t", ["a"], [], []), max_history=4)
    assert s.train.history.shape == s.test.history.shape == (0, 4) and len(s.valid) == 0


def test_no_target_leaks_into_its_history():
    rng = np.random.default_rng(0)
    seqs = [list(rng.permutation(50)[: rng.integers(3, 30)]) for _ in range(40)]
    s = leave_one_out(_ds(seqs), max_history=20)
    for ex in (s.train, s.valid, s.test):
        assert not (ex.history == ex.target[:, None]).any()
    assert len(s.train) == sum(len(q) - 3 for q in seqs)


def test_too_short_history_names_user():
    with pytest.raises(ValueError, match="u1"):
        leave_one_out(_ds([[0, 1, 2], [3, 4]]))


def test_cooccurrence_embeddings_ignore_held_out_items():
    from sidrec.data.collaborative import cooccurrence_embeddings

    # Items 3 and 4 appear only as validation/test items: they must get no signal (zero rows).
    ds = _ds([[0, 1, 2, 3, 4], [1, 0, 2, 3, 4], [2, 1, 0, 4, 3]])
    emb = cooccurrence_embeddings(ds, dim=3, window=2)
    assert emb.shape == (5, 3)
    assert np.allclose(emb[3:], 0.0)
    assert np.allclose(np.linalg.norm(emb[:3], axis=1), 1.0, atol=1e-5)
