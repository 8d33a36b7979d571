"""Recommender.recommend_batch: one batched decode that matches per-history recommend."""

import pytest

from sidrec.serve.service import Recommender


@pytest.fixture(scope="module")
def rec(tiny_run):
    return Recommender.from_run(tiny_run, device="cpu")


def test_recommend_batch_equals_per_history_recommend(rec):
    # k + history length stays under the default beam (20), so every row gets the same search as alone.
    histories = [["i3", "i4"], ["i10"], ["i0", "i1", "i2", "i3", "i4", "i5", "i6"], ["i39", "i0", "i39"]]
    ks = [5, 3, 8, 1]
    excludes = [True, False, True, True]
    batch = rec.recommend_batch(histories, ks, excludes)
    assert [len(r) for r in batch] == ks
    for history, k, exclude, got in zip(histories, ks, excludes, batch):
        alone = rec.recommend(history, k=k, exclude_history=exclude)
        assert [r.item for r in got] == [r.item for r in alone]
        assert [r.sid for r in got] == [r.sid for r in alone]
        assert [r.score for r in got] == pytest.approx([r.score for r in alone], abs=1e-5)
        if exclude:
            assert not set(history) & {r.item for r in got}


def test_recommend_batch_single_values_apply_to_all(rec):
    histories = [["i3", "i4"], ["i20"]]
    assert rec.recommend_batch(histories, 4, False) == rec.recommend_batch(histories, [4, 4], [False, False])
    assert rec.recommend_batch([], 5) == []


def test_recommend_batch_rejects_bad_rows(rec):
    with pytest.raises(ValueError, match="history 1 is empty"):
        rec.recommend_batch([["i1"], []], 5)
    with pytest.raises(ValueError, match="k must be in 1..40, got 41 for history 0"):
        rec.recommend_batch([["i1"]], 41)
    with pytest.raises(ValueError, match="one per history"):
        rec.recommend_batch([["i1"], ["i2"]], [5])
    with pytest.raises(KeyError, match="'nope'"):
        rec.recommend_batch([["i1"], ["nope", "i2", "nope"]], 5)
    assert rec.unknown_items(["nope", "i2", "nope", "x"]) == ["nope", "x"]


def test_info_describes_the_served_model(rec):
    info = rec.info()
    assert info["items"] == 40 and info["dataset"] == "toy"
    assert info["sid_levels"] == rec.trie.level_sizes and info["max_history"] == 5
    assert info["parameters"] == rec.model.num_parameters() > 0


def test_bf16_is_opt_in_and_decodes_in_bf16(tiny_run):
    import torch

    from sidrec.utils import bf16_autocast

    exact = Recommender.from_run(tiny_run, device="cpu")
    fast = Recommender.from_run(tiny_run, device="cpu", bf16=True)
    assert fast.info()["bf16"] == bf16_autocast(torch.device("cpu"), True)
    assert exact.info()["bf16"] is False
    dtypes = {}
    for name, rec in (("fast", fast), ("exact", exact)):
        linear = next(m for m in rec.model.modules() if isinstance(m, torch.nn.Linear))
        handle = linear.register_forward_hook(lambda m, i, o, name=name: dtypes.setdefault(name, o.dtype) and None)
        got = rec.recommend_batch([["i3", "i4"], ["i10"]], 5)
        handle.remove()
        assert [len(r) for r in got] == [5, 5]
    assert dtypes["exact"] == torch.float32
    assert dtypes["fast"] == (torch.bfloat16 if fast.bf16 else torch.float32)
