"""benchmarks/tables.py: the tables of docs/results.md come from the per-run files alone."""

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_tables():
    spec = importlib.util.spec_from_file_location("tables", ROOT / "benchmarks" / "tables.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["tables"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def tables(tmp_path, monkeypatch):
    mod = load_tables()
    monkeypatch.setattr(mod, "RESULTS", tmp_path / "tables")
    monkeypatch.setattr(mod, "DOC", tmp_path / "results.md")
    return mod


def write_run(tables, row: str, seed: int, r10: float, **extra) -> Path:
    metrics = {f"{p}{m}": r10 / 2 for p in ("test.", "valid.", "popularity.test.", "popularity.valid.",
                                            "transition.test.", "transition.valid.") for m in tables.METRICS}
    metrics["test.recall@10"] = r10
    path = tables.result_path("beauty", row, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"row": row, "seed": seed, "minutes_to_best": 10.0,
                                "tokenizer.health": {"collision_rate": 0.5}, **metrics, **extra}))
    return path


def test_render_is_stable_and_follows_the_files(tables):
    write_run(tables, "tiger", 42, 0.06)
    write_run(tables, "tiger", 1, 0.08)
    tables.DOC.write_text("# Results\n\n<!-- table:beauty -->\nold\n<!-- /table:beauty -->\n\nafter\n")
    assert tables.main(["render", "--check"]) == 1  # the placeholder is not what the files give
    assert tables.main(["render"]) == 0
    once = tables.DOC.read_text()
    assert "| TIGER (rqvae) | 1, 42 |" in once and ".0700 ± .0141" in once  # mean ± sample std of .06, .08
    assert "last-item transition" in once and once.endswith("after\n") and "old" not in once
    assert tables.main(["render", "--check"]) == 0
    assert tables.main(["render"]) == 0 and tables.DOC.read_text() == once  # a second render changes nothing
    write_run(tables, "tiger", 2, 0.10)
    assert tables.main(["render", "--check"]) == 1  # a new file makes the doc stale
    tables.main(["render"])
    assert "| TIGER (rqvae) | 1, 2, 42 |" in tables.DOC.read_text()


def test_the_transition_mix_is_its_own_row(tables):
    write_run(tables, "tiger", 42, 0.06, **{"hybrid.lambda": 0.3, "hybrid.valid.ndcg@10": 0.05,
                                            **{f"hybrid.test.{m}": 0.09 for m in tables.METRICS}})
    text = tables.render_dataset("beauty")
    assert "| TIGER (rqvae) | 42 | .0300 | .0300 | .0600 |" in text
    assert "| TIGER (rqvae) + transition mix (lambda 0.3, on validation) | 42 | .0900 |" in text


def test_the_committed_results_page_is_what_its_files_give():
    mod = load_tables()
    text = mod.DOC.read_text()
    assert mod.render_doc(text) == text, "run: PYTHONPATH=. python benchmarks/tables.py render"
    names = re.findall(r"<!-- table:([\w-]+) -->", text)
    assert names and all(n in mod.DATASETS for n in names)
    for name in names:  # every marked block holds a generated table, not an empty or hand-written one
        block = text.split(f"<!-- table:{name} -->")[1].split(f"<!-- /table:{name} -->")[0]
        assert f"from `benchmarks/results/tables/{name}/`" in block
