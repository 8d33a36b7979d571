"""recommender/metrics.jsonl (step + epoch records), its resume rule, and the optional TensorBoard mirror."""

import json
import sys

import pytest

from sidrec.cli import main
from sidrec.config import load_config
from sidrec.pipeline import Run
from sidrec.training.metrics_log import MetricsLog, read_jsonl


def test_training_logs_steps_and_epochs_and_tensorboard(tiny_args, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, args = tiny_args
    assert main(["train", "configs/ml-100k-demo.yaml", *args, "train.log_every=4", "train.tensorboard=true"]) == 0
    out = capsys.readouterr().out
    assert "epoch   0  loss" in out and "epoch   1  loss" in out  # the one-line summary per epoch stays

    records = read_jsonl(run / "recommender" / "metrics.jsonl")
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert {r["kind"] for r in records} == {"step", "epoch"}
    assert [r["epoch"] for r in epochs] == [0, 1]
    assert all("valid.ndcg@10" in r and r["train_seconds"] >= 0 and r["valid_seconds"] >= 0 for r in epochs)
    assert [r["step"] for r in steps] == list(range(4, epochs[-1]["step"] + 1, 4))
    assert [r["step"] for r in records] == sorted(r["step"] for r in records)  # epoch records in step order
    for r in steps:
        assert r["loss"] > 0 and r["lr"] > 0 and r["samples_per_second"] > 0 and r["epoch"] in (0, 1)

    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(run / "tensorboard")).Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [r["step"] for r in steps]
    assert [e.step for e in acc.Scalars("valid/ndcg@10")] == [r["step"] for r in epochs]


def test_logging_settings_do_not_invalidate_a_trained_model(tmp_path):
    base = ["train.device=cpu", f"run_dir={tmp_path / 'r'}", f"cache_dir={tmp_path / 'c'}"]
    keys = Run(load_config(None, base), progress=False, log=lambda *_: None).keys()
    logged = Run(load_config(None, [*base, "train.log_every=7", "train.tensorboard=true"]), progress=False,
                 log=lambda *_: None).keys()
    assert logged == keys
    other = Run(load_config(None, [*base, "train.lr=0.01"]), progress=False, log=lambda *_: None).keys()
    assert other["train"] != keys["train"]


def test_resume_drops_records_after_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsLog(path) as log:
        for step in (10, 20, 30, 40):
            log.write({"kind": "step", "step": step, "epoch": 0, "loss": 1.0, "lr": 0.1})
    with MetricsLog(path, resume_step=20) as log:  # a checkpoint at step 20; steps 30, 40 will be redone
        log.write({"kind": "step", "step": 30, "epoch": 0, "loss": 0.5, "lr": 0.1})
    assert [(r["step"], r["loss"]) for r in read_jsonl(path)] == [(10, 1.0), (20, 1.0), (30, 0.5)]
    MetricsLog(path).close()  # a fresh start empties the log
    assert read_jsonl(path) == []


def test_bad_log_line_names_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1}) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2"):
        read_jsonl(path)


def test_missing_tensorboard_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install tensorboard"):
        MetricsLog(tmp_path / "metrics.jsonl", tensorboard_dir=tmp_path / "tb")
