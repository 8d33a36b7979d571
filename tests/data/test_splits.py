import numpy as np
import pytest

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
