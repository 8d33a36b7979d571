"""The run directory: RunDir's layout, and reading a run (Run.open, sidrec evaluate) never rewriting it."""

import hashlib
import json
import shutil

from sidrec.cli import main
from sidrec.pipeline import Run
from sidrec.rundir import RunDir


def _snapshot(root):
    """{relative path: sha256} of every file under ``root``."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_open_writes_nothing_and_evaluate_keeps_the_training_records(tiny_run, tmp_path, capsys):
    moved = shutil.copytree(tiny_run, tmp_path / "elsewhere")  # evaluated where it was copied, not where trained
    before = _snapshot(moved)
    run = Run.open(moved, progress=False, log=lambda *_: None)
    assert run.dir == moved and _snapshot(moved) == before

    (moved / "metrics.json").unlink()  # the evaluate stage re-runs and writes its own result
    del before["metrics.json"]
    stages = json.loads((moved / "stages.json").read_text())
    stages.pop("evaluate")
    (moved / "stages.json").write_text(json.dumps(stages))
    before["stages.json"] = _snapshot(moved)["stages.json"]
    assert main(["evaluate", str(moved), "--quiet"]) == 0
    after = _snapshot(moved)
    changed = {k for k in after if before.get(k) != after[k]}
    assert changed == {"metrics.json", "stages.json"}  # run.json and config.yaml are the training run's
    assert _snapshot(tiny_run)["metrics.json"] == after["metrics.json"]  # the same metrics, recomputed


def test_layout():
    run = RunDir("r")
    assert run.recommender.checkpoints.as_posix() == "r/recommender/checkpoints"
    assert run.recommender.log.as_posix() == "r/recommender/metrics.jsonl"
    assert run.sasrec.training.root.as_posix() == "r/sasrec/train"
    assert run.sasrec.training.log.as_posix() == "r/sasrec/metrics.jsonl"
    assert run.model_tokenizer.as_posix() == "r/model/tokenizer"


def test_sids_dir_is_the_models_own_after_a_joint_run(tmp_path):
    run = RunDir(tmp_path)
    assert run.sids_dir == run.tokenizer
    run.model_tokenizer.mkdir(parents=True)
    assert run.sids_dir == run.tokenizer  # a folder without SIDs is not a tokenizer folder
    run.sids_file(run.model_tokenizer).write_bytes(b"")
    assert run.sids_dir == run.model_tokenizer
