"""The README's Python API example, on a tiny trained run."""

import sidrec


def test_load_run_and_recommend(tiny_run):
    rec = sidrec.load_run(tiny_run, device="cpu")
    out = rec.recommend(["i3", "i4", "i5"], k=3)
    assert len(out) == 3
    assert {r.item for r in out}.isdisjoint({"i3", "i4", "i5"})
    assert all(len(r.sid) == rec.item_sids.shape[1] for r in out)


def test_readme_python_examples_run(tiny_run, capsys):
    """Every ```python block of README.md, on the tiny run (its path and item keys substituted)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks
    for code in blocks:
        code = code.replace("runs/ml-100k-demo", str(tiny_run))
        code = code.replace('["50", "172", "181"]', '["i3", "i4", "i5"]')
        exec(compile(code, "README.md", "exec"), {})  # our own README: running it is the point
    out = capsys.readouterr().out
    assert out.count("\n") >= 5 + 2  # five recommendations, then the codes of two items
