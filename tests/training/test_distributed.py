"""Data-parallel training (gloo on CPU) must follow the single-process run step for step: two-stage (DDP) and the
joint schedules (sharded recommender pass, whole-batch losses, averaged gradients of whichever side trains)."""

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from sidrec import distributed as dist
from sidrec.data.dataset import Dataset
from sidrec.data.splits import Examples, leave_one_out
from sidrec.decoding.trie import SidTrie
from sidrec.eval.evaluate import decode_order, generate_rankings
from sidrec.models.tiger import Tiger, TigerConfig
from sidrec.tokenizers import RQVAE, RQVAEConfig
from sidrec.training.checkpoint import latest_checkpoint
from sidrec.training.config import ScheduleConfig, TrainConfig
from sidrec.training.losses import LossesConfig, SODAConfig
from sidrec.training.metrics_log import read_jsonl
from sidrec.training.schedules import train_joint
from sidrec.training.two_stage import train_recommender

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
                        device="cpu", bf16=False)  # exact equality needs fp32: bf16 rounding follows shard shapes
    train_recommender(Tiger(cfg), split, sids, SidTrie(sids, LEVELS), train, out, seed=0, progress=False)


def _train_alternating(out: Path) -> None:
    """ETEGRec/SODA-style alternation (tokenizer, recommender, tokenizer epochs) with SODA's in-batch and sampled
    negatives; each process also writes its own final weights to ``out/rank<r>.safetensors``."""
    split, _ = _toy_problem()
    emb = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    tok = RQVAE(RQVAEConfig(num_levels=2, codebook_size=4, latent_dim=4, hidden_dims=[8], epochs=2, batch_size=16),
                input_dim=6).fit(emb, seed=0, device="cpu", progress=False)
    tok.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    cfg = TigerConfig(level_sizes=[4, 4, 40], d_model=16, num_heads=2, d_kv=8, d_ff=32, num_encoder_layers=1,
                      num_decoder_layers=1, dropout=0.0, user_buckets=8, max_history=5)
    model = Tiger(cfg)
    train = TrainConfig(epochs=3, batch_size=25, lr=3e-3, warmup_steps=2, eval_batch_size=7, eval_beam_size=10,
                        device="cpu", bf16=False)  # exact equality needs fp32: bf16 rounding follows shard shapes
    sched = ScheduleConfig(name="alternating", cycle_epochs=2, tokenizer_lr=1e-2,
                           losses=LossesConfig(soda=SODAConfig(weight=0.5, sampled=4)))
    train_joint(model, tok, emb, split, train, sched, out, seed=0, progress=False)
    state = {f"recommender.{k}": v for k, v in model.state_dict().items()}
    state.update({f"tokenizer.{k}": v for k, v in tok.state_dict().items()})
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / f"rank{dist.rank()}.safetensors"))


def _decode(out: Path) -> None:
    """Decode 37 toy users in batches of 4 (fp32) and write this process's copy of every row to ``out/rank<r>.npy``."""
    _, sids = _toy_problem()
    cfg = TigerConfig(level_sizes=LEVELS, d_model=16, num_heads=2, d_kv=8, d_ff=32, num_encoder_layers=1,
                      num_decoder_layers=1, dropout=0.0, user_buckets=8, max_history=6)
    model = Tiger(cfg, generator=torch.Generator().manual_seed(0))
    rng = np.random.default_rng(0)
    history = np.full((37, 6), -1, np.int64)  # left-padded, lengths 1..6
    for i, n in enumerate(rng.integers(1, 7, 37)):
        history[i, 6 - n :] = rng.integers(0, len(sids), n)
    ex = Examples(history, rng.integers(0, len(sids), 37), np.arange(37))
    ranked = generate_rankings(model, ex, sids, SidTrie(sids, LEVELS), beam_size=6, topk=5, batch_size=4,
                               progress=False, bf16=False)
    np.save(out / f"rank{dist.rank()}.npy", ranked)


def _worker(rank: int, world: int, port: int, out: str, train=_train) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_from_env(torch.device("cpu"))
    try:
        train(Path(out))
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


def test_interleave_covers_every_item_once(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    parts = []
    for r in range(3):
        monkeypatch.setenv("RANK", str(r))
        parts.append(dist.interleave(10))
    assert [list(p) for p in parts] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]


@pytest.mark.parametrize("world", [2, 3, 4])
def test_decoding_shards_carry_the_same_tokens_to_one_batch(monkeypatch, world):
    """Every process decodes about the same padded tokens (rows x trimmed width of each of its batches): they
    differ by at most one batch's, and every user is decoded exactly once."""
    monkeypatch.setenv("WORLD_SIZE", str(world))
    lengths = np.minimum(np.random.default_rng(world).geometric(0.12, 2000), 50)  # skewed, as real histories are
    batch = 64
    orders = [decode_order(lengths, r) for r in range(world)]
    assert sorted(np.concatenate(orders).tolist()) == list(range(len(lengths)))
    tokens = [sum(len(b) * int(lengths[b].max()) for b in np.array_split(o, range(batch, len(o), batch)))
              for o in orders]
    assert max(tokens) - min(tokens) <= batch * lengths.max(), tokens
    assert all(np.all(np.diff(lengths[o]) >= 0) for o in orders)  # each process's batches are length runs


def test_two_gloo_processes_decode_the_rows_of_one_process(tmp_path):
    """Interleaved shards, gathered: every process holds the single-process rankings, row for row (fp32)."""
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    (tmp_path / "single").mkdir()
    _decode(tmp_path / "single")
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), _decode), nprocs=2, join=True)
    one = np.load(tmp_path / "single" / "rank0.npy")
    for r in range(2):
        np.testing.assert_array_equal(np.load(tmp_path / f"rank{r}.npy"), one)


def test_same_random_draws_ignore_what_was_drawn_before():
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    torch.rand(5)  # one process drew more before the shared draws (e.g. dropout on a larger shard)
    with dist.same_random_draws(7, cpu):
        a = torch.randint(100, (8,))
    after_a = torch.rand(3)
    torch.manual_seed(0)
    torch.rand(2)
    with dist.same_random_draws(7, cpu):
        b = torch.randint(100, (8,))
    assert torch.equal(a, b)
    torch.manual_seed(0)
    torch.rand(5)
    assert torch.equal(torch.rand(3), after_a)  # the outer stream goes on as if nothing was drawn inside


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


def test_alternating_soda_on_two_gloo_processes_matches_one_process(tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    single, double = tmp_path / "single", tmp_path / "ddp"
    _train_alternating(single)
    mp.spawn(_worker, args=(2, _free_port(), str(double), _train_alternating), nprocs=2, join=True)

    one, two = _log(single), _log(double)  # only rank 0 writes the log: one line per epoch
    assert [r["phase"] for r in two] == ["tokenizer", "recommender", "tokenizer"]
    for a, b in zip(one, two, strict=True):
        assert a["step"] == b["step"] and a.keys() == b.keys()
        for k in [k for k in a if k == "loss" or k.startswith("loss.")]:  # every term, SODA's included
            assert b[k] == pytest.approx(a[k], rel=1e-5), k
        valid = [k for k in a if k.startswith("valid.")]
        assert valid and all(b[k] == pytest.approx(a[k], abs=1e-9) for k in valid)  # exact: every ranking gathered
        if "usage" in a:  # the codes recomputed after a tokenizer epoch
            assert b["usage"] == a["usage"] and b["collision_rate"] == a["collision_rate"]
    w1 = load_file(str(latest_checkpoint(single / "checkpoints") / "model.safetensors"))
    w2 = load_file(str(latest_checkpoint(double / "checkpoints") / "model.safetensors"))
    assert w1.keys() == w2.keys() and torch.equal(w1["item_sids"], w2["item_sids"])
    for name in w1:  # the recommender and the tokenizer
        torch.testing.assert_close(w2[name], w1[name], atol=1e-5, rtol=1e-4, msg=name)
    r0, r1 = load_file(str(double / "rank0.safetensors")), load_file(str(double / "rank1.safetensors"))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # the processes stayed identical


@pytest.mark.slow
def test_cli_nproc_2_matches_one_process(tmp_path):
    """``sidrec run --nproc 2`` (torchrun, 2 gloo processes) gives the single-process run's metrics (~25 s)."""
    import subprocess
    import sys

    from conftest import tiny_overrides

    run, args = tiny_overrides(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sidrec", "run", "configs/ml-100k-demo.yaml", *args, "model.params.dropout=0.0",
           "train.bf16=false", "eval.bf16=false"]  # exact equality needs fp32: bf16 rounding follows shard shapes
    subprocess.run([*cmd, "--quiet", "--nproc", "2"], check=True, env=env, capture_output=True)
    ddp = json.loads((run / "metrics.json").read_text())
    subprocess.run([*cmd, f"run_dir={tmp_path / 'single'}", "--quiet"], check=True, env=env, capture_output=True)
    one = json.loads((tmp_path / "single" / "metrics.json").read_text())
    tests = [k for k in one if k.startswith("test.")]
    assert tests and all(ddp[k] == pytest.approx(one[k], abs=1e-9) for k in tests)
    epochs = [r for r in read_jsonl(run / "recommender" / "metrics.jsonl") if r["kind"] == "epoch"]
    assert len(epochs) == 2  # written by rank 0 only


@pytest.mark.slow
def test_cli_nproc_2_etegrec_alternating_matches_one_process(tmp_path):
    """ETEGRec's alternation with SIA, PSA and SODA under ``sidrec run --nproc 2`` gives the single-process run's
    metrics and tokenizer (~60 s)."""
    import subprocess
    import sys

    from conftest import tiny_overrides

    run, args = tiny_overrides(tmp_path)
    extra = ["model.name=etegrec", "model.params.dropout=0.0", "schedule.name=alternating", "train.epochs=3",
             "schedule.warmup_epochs=0", "schedule.finetune_epochs=1", "schedule.tokenizer_lr=0.01",
             "schedule.losses={sia: {weight: 0.01}, psa: {weight: 0.01}, soda: {weight: 0.5, sampled: 4}}",
             "tokenizer.params.reduction=mean", "train.bf16=false", "eval.bf16=false"]  # fp32: see above
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sidrec", "run", "configs/ml-100k-demo.yaml", *args, *extra, "--quiet"]
    subprocess.run([*cmd, "--nproc", "2"], check=True, env=env, capture_output=True)
    subprocess.run([*cmd, f"run_dir={tmp_path / 'single'}"], check=True, env=env, capture_output=True)
    ddp = json.loads((run / "metrics.json").read_text())
    one = json.loads((tmp_path / "single" / "metrics.json").read_text())
    tests = [k for k in one if k.startswith("test.")]
    assert tests and all(ddp[k] == pytest.approx(one[k], abs=1e-9) for k in tests)
    sids = [np.load(r / "model" / "tokenizer" / "sids.npy") for r in (run, tmp_path / "single")]
    assert np.array_equal(*sids)  # the same tokenizer update, and codes recomputed the same way
    epochs = [r for r in read_jsonl(run / "recommender" / "metrics.jsonl") if r["kind"] == "epoch"]
    single = [r for r in read_jsonl(tmp_path / "single" / "recommender" / "metrics.jsonl") if r["kind"] == "epoch"]
    assert [r["phase"] for r in epochs] == ["tokenizer", "recommender", "recommender"]  # rank 0's log only
    assert {"loss.sq", "loss.psa", "loss.sia", "loss.soda"} <= epochs[0].keys()  # all of them reach the tokenizer
    for a, b in zip(single, epochs, strict=True):
        for k in [k for k in a if k == "loss" or k.startswith("loss.")]:
            assert b[k] == pytest.approx(a[k], rel=1e-5), k


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
