"""Crash safety for real: ``sidrec run`` is SIGKILLed at named points (and at a random moment), then
``sidrec run --resume`` must finish with exactly the metrics of an uninterrupted run (CPU, fixed seed).

The named points are ``sidrec.utils.crash_point`` hooks, armed by ``SIDREC_TEST_KILL_AT=<point>@<n>`` in the
child's environment only. ``atomic_write@n`` is the n-th atomic file write of a tiny run (31 in all: config,
prepared data, embedding cache, tokenizer, best snapshots and their copies in best/, checkpoints' LATEST, final
model, metrics, stages.json). The resumed run must also leave no temp file of the killed attempt's writes.
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import tiny_overrides
from sidrec.cli import main
from sidrec.training.checkpoint import latest_checkpoint, verify_checkpoint
from sidrec.training.metrics_log import read_jsonl
from sidrec.utils import read_json

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/ml-100k-demo.yaml"
ATOMIC_WRITES = 31  # atomic writes in one tiny run, in order (see the module docstring)
QUICK_POINTS = [
    "train.step@60",
    "checkpoint.rename@2",
    "checkpoint.latest@1",
    "atomic_write@7",
    "atomic_write@22",
]
ALL_POINTS = (
    [f"atomic_write@{n}" for n in range(1, ATOMIC_WRITES + 1)]
    + [f"checkpoint.{p}@{n}" for p in ("files", "rename", "latest", "prune") for n in (1, 2)]
    + [f"train.step@{n}" for n in (1, 15, 30, 45, 60, 89)]
)


def _start(root: Path, kill_at: str | None = None) -> tuple[Path, list[str], subprocess.Popen]:
    run, args = tiny_overrides(root)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("SIDREC_TEST_KILL_AT", None)
    if kill_at:
        env["SIDREC_TEST_KILL_AT"] = kill_at
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidrec", "run", CONFIG, *args, "--quiet"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return run, args, proc


def _assert_consistent(run: Path) -> None:
    """What a killed run leaves behind: every file readers open is complete, every stage marked done has its
    outputs, and LATEST (if any) names an intact checkpoint."""
    for path in run.rglob("*.json"):
        if not path.name.startswith("."):  # hidden .tmp files are unfinished atomic writes, never read
            read_json(path)
    stages = read_json(run / "stages.json") if (run / "stages.json").exists() else {}
    outputs = {
        "prepare": "data/sequences.npz",
        "tokenize": "tokenizer/sids.npy",
        "train": "model/model.safetensors",
        "evaluate": "metrics.json",
    }
    for stage in stages:
        if stage in outputs:
            assert (run / outputs[stage]).exists(), f"{stage} marked done without {outputs[stage]}"
    ckpt = latest_checkpoint(run / "recommender" / "checkpoints")
    if ckpt is not None:
        verify_checkpoint(ckpt)


def _resume_and_compare(run: Path, args: list[str], reference: dict) -> None:
    _assert_consistent(run)
    assert main(["run", CONFIG, *args, "--resume", "--quiet"]) == 0
    assert read_json(run / "metrics.json") == reference
    assert not list(run.rglob(".*.tmp"))  # the killed attempt's unfinished atomic writes were cleaned up
    log = read_jsonl(run / "recommender" / "metrics.jsonl")
    assert [r["epoch"] for r in log if r["kind"] == "epoch"] == [0, 1]  # no epoch logged twice by the killed attempt
    steps = [r["step"] for r in log]
    assert steps == sorted(steps)  # nor any step


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """Metrics of the uninterrupted tiny run."""
    run, args = tiny_overrides(tmp_path_factory.mktemp("straight"))
    assert main(["run", CONFIG, *args, "--quiet"]) == 0
    return read_json(run / "metrics.json")


def _kill_and_resume(root: Path, point: str, reference: dict) -> None:
    run, args, proc = _start(root, point)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, f"{point} was never reached: {err.decode()[-2000:]}"
    _resume_and_compare(run, args, reference)


@pytest.mark.parametrize("point", QUICK_POINTS)
def test_sigkill_at_named_point_then_resume(tmp_path, point, reference):
    _kill_and_resume(tmp_path, point, reference)


def _kill_at_random_moment(root: Path, delay: float, reference: dict) -> None:
    """os.kill(pid, SIGKILL) from outside, ``delay`` seconds after training started."""
    run, args, proc = _start(root)
    deadline = time.monotonic() + 300
    while not (run / "recommender" / "key").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "training never started"
        time.sleep(0.005)
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before the kill"
    _resume_and_compare(run, args, reference)


def test_sigkill_from_outside_during_training_then_resume(tmp_path, reference):
    _kill_at_random_moment(tmp_path, 0.05, reference)


@pytest.mark.slow
@pytest.mark.parametrize("point", ALL_POINTS)
def test_sigkill_at_every_point_then_resume(tmp_path, point, reference):
    _kill_and_resume(tmp_path, point, reference)


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(10))
def test_sigkill_at_random_moments_then_resume(tmp_path, trial, reference):
    _kill_at_random_moment(tmp_path, random.Random(trial).uniform(0.0, 0.4), reference)


def test_resume_and_fresh_are_exclusive(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", CONFIG, "--resume", "--fresh"])
    assert info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_resume_refuses_a_damaged_only_checkpoint(tiny_args, capsys):
    run, args = tiny_args
    assert main(["run", CONFIG, *args, "--quiet", "--time-budget", "1e-9"]) == 3
    ckpt = latest_checkpoint(run / "recommender" / "checkpoints")
    data = bytearray((ckpt / "model.safetensors").read_bytes())
    data[-5] ^= 0x10
    (ckpt / "model.safetensors").write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["run", CONFIG, *args, "--quiet", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "skipping damaged checkpoint" in err and "checksum mismatch" in err and "--fresh" in err
    assert not (run / "metrics.json").exists()
    assert main(["run", CONFIG, *args, "--quiet", "--fresh"]) == 0
