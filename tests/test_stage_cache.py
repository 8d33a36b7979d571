"""Stage caching keyed on what each stage read: the data files, the prepared data, the embedding inputs."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from sidrec.cli import main
from sidrec.data.dataset import Dataset
from sidrec.embeddings import EmbedConfig, embedding_key
from sidrec.pipeline import StaleRunError, stale_model
from sidrec.serve.service import Recommender

DEMO = "configs/ml-100k-demo.yaml"
DEMO_ABS = Path(__file__).parents[1] / DEMO


def stages(run):
    return json.loads((run / "stages.json").read_text())


def test_an_edited_data_file_is_read_again(tiny_args, capsys):
    run, args = tiny_args
    assert main(["prepare", DEMO, *args, "--quiet"]) == 0
    assert "u999" not in Dataset.load(run / "data").user_keys
    inter = run.parent / "data" / "toy.inter"
    with open(inter, "a") as f:
        f.write("".join(f"u999\ti{i}\t5\t{2000 + i}\n" for i in range(6)))
    assert main(["prepare", DEMO, *args, "--quiet"]) == 0
    ds = Dataset.load(run / "data")
    assert ds.user_keys[-1] == "u999" and ds.sequences[-1].tolist() == [ds.item_index()[f"i{i}"] for i in range(6)]


def test_changed_data_retrains_and_unchanged_content_does_not(tiny_args):
    run, args = tiny_args
    assert main(["run", DEMO, *args, "--quiet"]) == 0
    model = run / "model" / "model.safetensors"
    trained = model.stat().st_mtime_ns
    inter = run.parent / "data" / "toy.inter"
    os.utime(inter)  # touched, same bytes: read again, same prepared data, nothing later re-runs
    assert main(["run", DEMO, *args, "--quiet"]) == 0
    assert model.stat().st_mtime_ns == trained
    (run.parent / "data" / "notes.txt").write_text("unrelated file")
    assert main(["run", DEMO, *args, "--quiet"]) == 0
    assert model.stat().st_mtime_ns == trained
    lines = inter.read_text().splitlines()
    inter.write_text("\n".join(lines[:-1]) + "\n")  # the last user loses an item
    old = stages(run)
    assert main(["run", DEMO, *args, "--quiet"]) == 0
    assert model.stat().st_mtime_ns != trained
    new = stages(run)
    assert all(new[s] != old[s] for s in ("embed", "tokenize", "train", "evaluate"))


def test_prepare_alone_on_changed_data_makes_the_model_stale(tiny_args, capsys):
    run, args = tiny_args
    assert main(["run", DEMO, *args, "--quiet"]) == 0
    trained = stages(run)
    inter = run.parent / "data" / "toy.inter"
    inter.write_text("\n".join(inter.read_text().splitlines()[:-1]) + "\n")
    assert main(["prepare", DEMO, *args, "--quiet"]) == 0
    after = stages(run)
    assert "stale" not in after["prepare"]
    for stage in ("embed", "tokenize", "train", "evaluate"):  # kept with their provenance, never reused
        assert after[stage] == {**trained[stage], "stale": "prepare"}
    capsys.readouterr()
    for command in (["recommend", str(run), "--history", "i1", "i2"], ["evaluate", str(run), "--quiet"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"{run / 'model'} is stale: the prepare stage re-ran with other results after the model was " \
               "trained" in err and "--allow-stale" in err
    with pytest.raises(StaleRunError, match="the prepare stage re-ran"):
        Recommender.from_run(run, "cpu")  # what `sidrec serve` and sidrec.load_run load
    assert main(["recommend", str(run), "--history", "i1", "i2", "--allow-stale"]) == 0
    assert "is stale: the prepare stage re-ran" in capsys.readouterr().err  # warned, not refused
    assert main(["run", DEMO, *args, "--quiet"]) == 0  # trained again: current
    assert stale_model(run) is None and not any("stale" in rec for rec in stages(run).values())


def test_a_config_that_no_longer_matches_the_model_is_stale(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    assert stale_model(run) is None
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("epochs: 2", "epochs: 3", 1))
    assert stale_model(run) == "config.yaml's train settings are not those the model was trained under"


def test_runs_of_earlier_versions_are_read_and_judged(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    keys = {stage: rec["key"] for stage, rec in stages(run).items()}  # the format before per-stage records
    (run / "stages.json").write_text(json.dumps(keys))
    assert stale_model(run) is None
    (run / "stages.json").write_text(json.dumps({"prepare": keys["prepare"]}))  # how they dropped later stages
    assert stale_model(run) == ("stages.json records no train stage: the prepare stage re-ran with other results "
                                "after the model was trained")


def test_stages_record_their_own_provenance_and_cached_stages_keep_theirs(tiny_args, monkeypatch):
    run, args = tiny_args
    assert main(["run", DEMO, *args, "--quiet"]) == 0
    first = stages(run)
    for stage, rec in first.items():
        prov = rec["provenance"]
        assert {"git_commit", "torch", "sidrec", "cpu_threads", "processes", "finished"} <= set(prov), stage
        assert prov["precision"] in ("fp32", "bf16 autocast")
    run_json = (run / "run.json").read_text()
    monkeypatch.setattr("sidrec.pipeline.run_metadata", lambda seed: {"seed": seed, "git_commit": "another"})
    assert main(["run", DEMO, *args, "--quiet"]) == 0  # everything cached: nothing is rewritten
    assert stages(run) == first and (run / "run.json").read_text() == run_json
    assert main(["run", DEMO, *args, "eval.beam_size=12", "--quiet"]) == 0  # only evaluate re-runs
    second = stages(run)
    assert second["evaluate"]["provenance"]["git_commit"] == "another"
    assert all(second[s] == first[s] for s in ("prepare", "embed", "tokenize", "train"))


def test_fresh_re_reads_what_size_and_mtime_cannot_tell(tiny_args):
    run, args = tiny_args
    assert main(["prepare", DEMO, *args, "--quiet"]) == 0
    item = run.parent / "data" / "toy.item"
    st = item.stat()
    item.write_text(item.read_text().replace("Movie 1\t", "Mobie 1\t"))  # same size
    os.utime(item, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the same mtime
    assert main(["prepare", DEMO, *args, "--quiet"]) == 0
    assert Dataset.load(run / "data").title(1) == "Movie 1"  # cached: nothing says the file changed
    assert main(["prepare", DEMO, *args, "--quiet", "--fresh"]) == 0
    assert Dataset.load(run / "data").title(1) == "Mobie 1"


def test_changed_embedding_input_refits_the_tokenizer(tiny_args, tmp_path):
    run, args = tiny_args
    npy = tmp_path / "emb.npy"
    np.save(npy, np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32))
    args = [*args, "embed.sources=[npy]", f"embed.npy_path={npy}"]
    assert main(["tokenize", DEMO, *args, "--quiet"]) == 0
    fitted = stages(run)["tokenize"]
    np.save(npy, np.random.default_rng(1).standard_normal((40, 8)).astype(np.float32))  # same path, new vectors
    assert main(["tokenize", DEMO, *args, "--quiet"]) == 0
    assert stages(run)["tokenize"] != fitted


def test_embedding_key_covers_the_encoder_identity(tmp_path):
    model = tmp_path / "encoder"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"0" * 10)
    ds = Dataset("toy", ["a", "b"], ["u"], [np.array([0, 1])], item_text={"title": ["A", "B"]})
    cfg = EmbedConfig(sources=["text"], model_path=str(model))
    key = embedding_key(ds, cfg)
    (model / "model.safetensors").write_bytes(b"0" * 11)  # other weights
    assert embedding_key(ds, cfg) != key


def test_high_collision_rates_are_flagged_with_remedies(tiny_args, tmp_path, capsys):
    from sidrec.tokenizers.index import write_index_json

    run, args = tiny_args
    coarse = [a for a in args if not a.startswith("tokenizer.params")]
    coarse.append("tokenizer.params={num_levels: 1, codebook_size: 2, epochs: 1, hidden_dims: [16], latent_dim: 8}")
    assert main(["tokenize", DEMO, *coarse, "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "of the items share all their codes with another item (largest group" in err
    for remedy in ("tokenizer.params.num_levels", "cooccurrence", "balanced: true", "tokenizer.name: letter"):
        assert remedy in err
    # Imported SIDs too: 40 items on 4 code tuples.
    index = write_index_json(tmp_path / "coarse.index.json", np.array([[i % 4] for i in range(40)]))
    imported = [a for a in args if not a.startswith("tokenizer.")] + [
        "tokenizer.name=imported", f"tokenizer.params={{path: {index}}}"]
    assert main(["tokenize", DEMO, *imported, "--quiet"]) == 0
    assert "90.0% of the items share all their codes with another item (largest group 10 items)" in \
        capsys.readouterr().err


def test_a_failed_prepare_leaves_no_config_behind(tiny_args, capsys):
    run, args = tiny_args
    bad = [a if not a.startswith("data.path=") else f"data.path={run.parent / 'nowhere'}" for a in args]
    assert main(["prepare", DEMO, *bad]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert not (run / "config.yaml").exists() and not (run / "run.json").exists()
    assert main(["prepare", DEMO, *args]) == 0
    out = capsys.readouterr().out
    assert "differs" not in out and (run / "config.yaml").exists() and (run / "run.json").exists()
    assert out.count('"users"') == 1 and out.count('"interactions"') == 1  # the stats once, as JSON
    assert json.loads(out.splitlines()[-1])["items_without_interactions"] == 0
    assert main(["prepare", DEMO, *args, "data.max_history=6"]) == 0
    assert "differs from this config" in capsys.readouterr().out  # a real earlier run: noted


def test_items_without_interactions_are_counted_and_reported(tiny_args, capsys):
    run, args = tiny_args
    inter = run.parent / "data" / "toy.inter"
    lines = inter.read_text().splitlines()
    inter.write_text("\n".join(line for line in lines if "\ti7\t" not in line) + "\n")  # i7 only in toy.item
    assert main(["prepare", DEMO, *args, "--quiet"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["items_without_interactions"] == 1
    assert "1 of the 40 items of toy are in no user's sequence" in captured.err


def test_relative_input_paths_all_resolve_against_sidrec_data(tiny_args, monkeypatch, capsys):
    from sidrec.tokenizers.index import write_index_json

    run, args = tiny_args
    root = run.parent  # holds data/ (the toy dataset)
    monkeypatch.setenv("SIDREC_DATA", str(root))
    np.save(root / "emb.npy", np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32))
    write_index_json(root / "toy.index.json", np.arange(40)[:, None] // 2)
    args = [a for a in args if not a.startswith(("data.path", "tokenizer."))]
    args += ["data.path=data", "embed.sources=[npy]", "embed.npy_path=emb.npy", "tokenizer.name=imported",
             "tokenizer.params={path: toy.index.json}"]
    monkeypatch.chdir(root.parent)  # nothing is resolved against the working directory
    assert main(["tokenize", str(DEMO_ABS), *args, "--quiet"]) == 0
    assert json.loads((run / "tokenizer" / "tokenizer.json").read_text())["source"]["path"] == \
        str(root / "toy.index.json")
    assert main(["tokenize", str(DEMO_ABS), *args, "tokenizer.params={path: gone.json}", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"tokenizer.params.path: {root / 'gone.json'}: not found ('gone.json' is relative, so it is resolved " \
           f"against $SIDREC_DATA = {root}" in err
    assert main(["embed", str(DEMO_ABS), *args, "embed.npy_path=gone.npy", "--quiet"]) == 2
    assert f"embed.npy_path: {root / 'gone.npy'}: not found" in capsys.readouterr().err
    assert main(["prepare", str(DEMO_ABS), *args, "data.path=nodata", "--quiet"]) == 2
    assert f"data.path: {root / 'nodata'}: not found ('nodata' is relative" in capsys.readouterr().err
