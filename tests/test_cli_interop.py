"""sidrec inspect / export-sids, and a run on imported SIDs (tokenizer.name=imported), through the CLI."""

import json
import shutil

import numpy as np
import pytest

from sidrec.cli import main
from sidrec.data.dataset import Dataset
from sidrec.tokenizers import load_sids
from sidrec.tokenizers.index import read_index_json


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A writable copy of the session's finished tiny run (its config still points at the shared cache)."""
    return shutil.copytree(tiny_run, tmp_path / "run")


def test_inspect_prints_tables_and_writes_plots(run_copy, capsys):
    assert main(["inspect", str(run_copy), "--samples", "30"]) == 0
    out = capsys.readouterr().out
    assert "tokenizer rqvae, 40 items, 2 levels" in out and "nearest neighbour" in out
    assert "fit log: 3 epochs; level-1 usage first" in out
    names = sorted(p.name for p in (run_copy / "inspect").iterdir())
    assert names == ["fit_usage.png", "health.json", "prefix_sharing.png", "usage_histogram.png"]

    assert main(["inspect", str(run_copy), "--json", "--no-plots", "--samples", "30"]) == 0
    report = json.loads(capsys.readouterr().out)
    health = json.loads((run_copy / "tokenizer" / "health.json").read_text())
    scale = health.pop("input_scale")  # the tokenize stage also records the row norms of its input
    assert set(scale) == {"input", "standardized"} and 0 < scale["input"]["min"] <= scale["input"]["max"]
    assert report["codebook"] == health  # the same statistics the tokenize stage recorded
    assert report["level_sizes"] == [8, 8] and report["prefix_sharing"]["num_samples"] == 30
    assert len(report["prefix_sharing"]["neighbour"]) == 2 and len(report["fit"]["steps"]) == 3
    assert json.loads((run_copy / "inspect" / "health.json").read_text()) == report


def test_inspect_errors(tmp_path, run_copy, capsys):
    assert main(["inspect", str(tmp_path / "nowhere")]) == 2
    assert "sids.npy: missing" in capsys.readouterr().err
    assert main(["inspect", str(run_copy), "--samples", "-1"]) == 2
    assert "--samples: must be >= 0" in capsys.readouterr().err


def test_export_sids_round_trips_through_index_json(run_copy, tmp_path, capsys):
    sids, _ = load_sids(run_copy / "tokenizer")
    ds = Dataset.load(run_copy / "data")
    out = tmp_path / "t.index.json"
    assert main(["export-sids", str(run_copy), "--format", "index-json", "-o", str(out)]) == 0
    assert np.array_equal(read_index_json(out, ds), sids)
    assert main(["export-sids", str(run_copy), "--format", "index-json", "--keys", "item", "-o", str(out)]) == 0
    assert list(json.loads(out.read_text()))[:2] == ds.item_keys[:2]
    assert np.array_equal(read_index_json(out, ds, keys="item"), sids)
    assert main(["export-sids", str(run_copy), "-o", str(tmp_path / "t.json")]) == 0
    items = json.loads((tmp_path / "t.json").read_text())["items"]
    assert [r["item"] for r in items] == ds.item_keys and items[3]["title"] == "Movie 3"
    assert [r["sid"] for r in items] == sids.tolist()
    assert "40 items x 3 tokens" in capsys.readouterr().out
    assert main(["export-sids", str(tmp_path), "-o", str(tmp_path / "x.json")]) == 2


def test_run_on_imported_sids_with_collisions(tiny_args, tiny_run, tmp_path, capsys):
    """SIDs exported from one run, with the dedup token dropped, train a recommender in another run."""
    sids, _ = load_sids(tiny_run / "tokenizer")
    index = tmp_path / "Toy.index.json"
    index.write_text(json.dumps({str(i): [f"<{'ab'[lv]}_{c}>" for lv, c in enumerate(row[:-1])]
                                 for i, row in enumerate(sids.tolist())}))
    run, args = tiny_args
    args = [a for a in args if not a.startswith("tokenizer.params")]
    args += ["tokenizer.name=imported", f"tokenizer.params={{path: {index}, codebook_size: 8}}"]
    assert main(["run", "configs/ml-100k-demo.yaml", *args, "--quiet"]) == 0
    imported, sizes = load_sids(run / "tokenizer")
    assert np.array_equal(imported, sids)  # same codes, same dedup tokens
    assert sizes == [8, 8, int(sids[:, -1].max()) + 1]
    meta = json.loads((run / "tokenizer" / "tokenizer.json").read_text())
    assert meta["name"] == "imported" and meta["dedup"] and meta["num_levels"] == 2
    assert not (run / "tokenizer" / "fit_log.jsonl").exists()
    assert "test.ndcg@10" in json.loads((run / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["inspect", str(run), "--no-plots", "--samples", "20"]) == 0
    out = capsys.readouterr().out
    assert "tokenizer imported, 40 items, 2 levels" in out and "fit log" not in out

    # A changed file (same path) re-imports; a bad one fails naming the file and item.
    index.write_text(json.dumps({"0": ["<a_1>", "<c_2>"]}))
    assert main(["tokenize", "configs/ml-100k-demo.yaml", *args, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{index}: item '0', token 2: token '<c_2>' has level letter 'c', expected 'b'" in err


def test_bad_import_params_fail_before_embedding(tiny_args, tmp_path, capsys):
    run, args = tiny_args
    args = [a for a in args if not a.startswith("tokenizer.params")] + ["tokenizer.name=imported"]
    missing = tmp_path / "missing.index.json"
    assert main(["embed", "configs/ml-100k-demo.yaml", *args, f"tokenizer.params={{path: {missing}}}"]) == 2
    assert f"tokenizer.params.path: {missing}: not found" in capsys.readouterr().err
    assert main(["embed", "configs/ml-100k-demo.yaml", *args, "tokenizer.params={path: x, levels: 3}"]) == 2
    assert "tokenizer.params.levels: unknown parameter" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "embeddings").exists()


def test_rqkmeans_logs_its_fit_and_inspect_shows_it(tiny_args, capsys):
    run, args = tiny_args
    args = [a for a in args if not a.startswith("tokenizer.params")]
    args += ["tokenizer.name=rqkmeans", "tokenizer.params={num_levels: 2, codebook_size: 8, iters: 5}"]
    assert main(["tokenize", "configs/ml-100k-demo.yaml", *args, "--quiet"]) == 0
    records = [json.loads(line) for line in (run / "tokenizer" / "fit_log.jsonl").read_text().splitlines()]
    assert [r["level"] for r in records] == [1, 2] and [len(r["usage"]) for r in records] == [1, 2]
    capsys.readouterr()
    assert main(["inspect", str(run), "--json", "--samples", "20"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tokenizer"] == "rqkmeans" and report["fit"]["step"] == "level"
    assert (run / "inspect" / "fit_usage.png").is_file()
