"""The Python examples of the README and docs/guide.md, on a tiny trained run."""

import re
from pathlib import Path

import pytest

import sidrec


def test_load_run_and_recommend(tiny_run):
    rec = sidrec.load_run(tiny_run, device="cpu")
    out = rec.recommend(["i3", "i4", "i5"], k=3)
    assert len(out) == 3
    assert {r.item for r in out}.isdisjoint({"i3", "i4", "i5"})
    assert all(len(r.sid) == rec.item_sids.shape[1] for r in out)


@pytest.mark.parametrize("doc, lines", [("README.md", 5), ("docs/guide.md", 5 + 2)])
def test_python_examples_of_the_docs_run(doc, lines, tiny_run, capsys):
    """Every ```python block of the README and the guide, on the tiny run (its path and item keys substituted)."""
    text = (Path(__file__).resolve().parents[1] / doc).read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    for code in blocks:
        code = code.replace("runs/ml-100k-demo", str(tiny_run))
        code = code.replace('["50", "172", "181"]', '["i3", "i4", "i5"]')
        exec(compile(code, doc, "exec"), {})  # our own docs: running them is the point
    out = capsys.readouterr().out
    assert out.count("\n") >= lines  # five recommendations (and in the guide the codes of two items)
