"""The README's Python API example, on a tiny trained run."""

import sidrec


def test_load_run_and_recommend(tiny_run):
    rec = sidrec.load_run(tiny_run, device="cpu")
    out = rec.recommend(["i3", "i4", "i5"], k=3)
    assert len(out) == 3
    assert {r.item for r in out}.isdisjoint({"i3", "i4", "i5"})
    assert all(len(r.sid) == rec.item_sids.shape[1] for r in out)
