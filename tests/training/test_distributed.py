"""Data-parallel training (torch DDP, gloo on CPU) must follow the single-process run step for step."""

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from sidrec.config import TrainConfig
from sidrec.data.dataset import Dataset
from sidrec.data.splits import leave_one_out
from sidrec.decoding.trie import SidTrie
from sidrec.models.tiger import Tiger, TigerConfig
from sidrec.training import distributed as dist
from sidrec.training.checkpoint import latest_checkpoint
from sidrec.training.metrics_log import read_jsonl
from sidrec.training.recommender import train_recommender

LEVELS = [4, 4, 3]


def _toy_problem() -> tuple:
    """30 users walking item chains over 40 items with distinct random SIDs."""
    rng = np.random.default_rng(0)
    num_items = 40
    seqs = [(rng.integers(num_items) + np.arange(rng.integers(4, 9))) % num_items for _ in range(30)]
    ds = Dataset("toy", [f"i{i}" for i in range(num_items)], [f"u{u}" for u in range(30)], seqs)
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in LEVELS], indexing="ij"), -1).reshape(-1, len(LEVELS))
    sids = torch.as_tensor(grid[rng.permutation(len(grid))[:num_items]])
    return leave_one_out(ds, max_history=5), sids


def _train(out: Path) -> None:
    split, sids = _toy_problem()
    torch.manual_seed(0)
    cfg = TigerConfig(level_sizes=LEVELS, d_model=16, num_heads=2, d_kv=8, d_ff=32, num_encoder_layers=1,
                      num_decoder_layers=1, dropout=0.0, user_buckets=8, max_history=5)
    # batch 25 splits 13 / 12 over two processes, and the epoch's last batch is ragged
    train = TrainConfig(epochs=2, batch_size=25, lr=3e-3, warmup_steps=2, eval_batch_size=7, eval_beam_size=10,
                        device="cpu")
    train_recommender(Tiger(cfg), split, sids, SidTrie(sids, LEVELS), train, out, seed=0, progress=False)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_from_env(torch.device("cpu"))
    try:
        _train(Path(out))
    finally:
        dist.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log(out: Path) -> list[dict]:
    """The epoch records of the training log (rank 0's)."""
    return [r for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "epoch"]


def test_shard_covers_every_item_once(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    parts = []
    for r in range(3):
        monkeypatch.setenv("RANK", str(r))
        parts.append(dist.shard(10))
    assert [list(p) for p in parts] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_two_gloo_processes_match_one_process(tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    single, double = tmp_path / "single", tmp_path / "ddp"
    _train(single)
    mp.spawn(_worker, args=(2, _free_port(), str(double)), nprocs=2, join=True)

    one, two = _log(single), _log(double)  # only rank 0 writes the log: one line per epoch
    assert len(one) == len(two) == 2
    for a, b in zip(one, two, strict=True):
        assert a["step"] == b["step"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        valid = [k for k in a if k.startswith("valid.")]
        assert valid and all(b[k] == pytest.approx(a[k], abs=1e-9) for k in valid)  # exact: every ranking gathered
    w1 = load_file(str(latest_checkpoint(single / "checkpoints") / "model.safetensors"))
    w2 = load_file(str(latest_checkpoint(double / "checkpoints") / "model.safetensors"))
    assert w1.keys() == w2.keys()
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.slow
def test_cli_nproc_2_matches_one_process(tmp_path):
    """``sidrec run --nproc 2`` (torchrun, 2 gloo processes) gives the single-process run's metrics (~25 s)."""
    import subprocess
    import sys

    from conftest import tiny_overrides

    run, args = tiny_overrides(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sidrec", "run", "configs/ml-100k-demo.yaml", *args, "model.dropout=0.0"]
    subprocess.run([*cmd, "--quiet", "--nproc", "2"], check=True, env=env, capture_output=True)
    ddp = json.loads((run / "metrics.json").read_text())
    subprocess.run([*cmd, f"run_dir={tmp_path / 'single'}", "--quiet"], check=True, env=env, capture_output=True)
    one = json.loads((tmp_path / "single" / "metrics.json").read_text())
    tests = [k for k in one if k.startswith("test.")]
    assert tests and all(ddp[k] == pytest.approx(one[k], abs=1e-9) for k in tests)
    epochs = [r for r in read_jsonl(run / "recommender" / "metrics.jsonl") if r["kind"] == "epoch"]
    assert len(epochs) == 2  # written by rank 0 only


@pytest.mark.slow
def test_cli_nproc_passes_the_time_budget_exit_code(tmp_path):
    """A budget stop under ``--nproc`` exits 3 like one process (torchrun alone would report a crash)."""
    import subprocess
    import sys

    from conftest import tiny_overrides

    run, args = tiny_overrides(tmp_path)
    cmd = [sys.executable, "-m", "sidrec", "train", "configs/ml-100k-demo.yaml", *args, "--quiet", "--nproc", "2",
           "--time-budget", "0.001"]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert (run / "recommender" / "checkpoints").is_dir()
