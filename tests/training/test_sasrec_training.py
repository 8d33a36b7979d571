import json

import numpy as np
import pytest
import torch

from sidrec.data.dataset import Dataset
from sidrec.data.splits import Examples, leave_one_out
from sidrec.eval.metrics import topk_metrics
from sidrec.models.sasrec import SASRec, SASRecConfig, load_sasrec
from sidrec.training.metrics_log import read_jsonl
from sidrec.training.sasrec import (
    SASRecTrainConfig,
    evaluate_sasrec,
    rank_items,
    sasrec_baseline,
    sasrec_item_embeddings,
    train_sasrec,
)

NUM_ITEMS = 30


def successor_dataset(num_users: int = 80, seed: int = 0) -> Dataset:
    """Every user reads a run of consecutive items: item i is always followed by item i + 1."""
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(num_users):
        length = int(rng.integers(5, 9))
        start = int(rng.integers(0, NUM_ITEMS - length + 1))
        seqs.append(np.arange(start, start + length, dtype=np.int64))
    items, users = [f"i{i}" for i in range(NUM_ITEMS)], [f"u{u}" for u in range(num_users)]
    return Dataset("successor", items, users, seqs)


def small_model(seed: int = 0, loss: str = "ce") -> SASRec:
    torch.manual_seed(seed)
    cfg = SASRecConfig(num_items=NUM_ITEMS, d_model=32, num_heads=2, max_len=10, dropout=0.1, loss=loss)
    return SASRec(cfg)


@pytest.mark.parametrize("loss, min_recall", [("ce", 0.8), ("bce", 0.6)])  # one negative learns slower
def test_training_learns_the_successor_and_keeps_the_best_epoch(tmp_path, loss, min_recall):
    split = leave_one_out(successor_dataset(), max_history=8)
    model = small_model(loss=loss)
    before = evaluate_sasrec(model, split.test, ks=[1])["recall@1"]
    cfg = SASRecTrainConfig(epochs=50, batch_size=32, lr=1e-2, patience=50, max_steps=100, log_every=7)
    res = train_sasrec(model, split, cfg, tmp_path, seed=0, device="cpu", progress=False)
    assert res["steps"] == 100
    assert res["history"][-1]["loss"] < 0.5 * res["history"][0]["loss"]
    after = evaluate_sasrec(model, split.test, ks=[1])["recall@1"]
    assert before < 0.2 and after > min_recall
    # the model left in memory is the best validation epoch, the one saved in best/
    best = load_sasrec(tmp_path / "best")
    assert torch.equal(best.item_embeddings(), model.item_embeddings())
    assert evaluate_sasrec(model, split.valid, ks=[10]) == res["best_valid"]
    log = read_jsonl(tmp_path / "metrics.jsonl")
    epochs = [r for r in log if r["kind"] == "epoch"]
    assert epochs == res["history"] and [r["epoch"] for r in epochs] == list(range(res["epochs_run"]))
    assert all("valid.ndcg@10" in r and r["lr"] == 1e-2 for r in epochs)
    assert [r["step"] for r in log if r["kind"] == "step"] == list(range(7, 101, 7))
    assert [r["step"] for r in log] == sorted(r["step"] for r in log)  # steps never go back along the file


def test_resumed_training_matches_an_uninterrupted_run(tmp_path):
    split = leave_one_out(successor_dataset(num_users=30), max_history=8)
    cfg = SASRecTrainConfig(epochs=3, batch_size=16, patience=10, log_every=3)
    full = small_model(loss="bce")
    res_full = train_sasrec(full, split, cfg, tmp_path / "full", seed=3, device="cpu", progress=False)
    part = small_model(loss="bce")
    train_sasrec(part, split, SASRecTrainConfig(epochs=1, batch_size=16, patience=10, log_every=3),
                 tmp_path / "part", seed=3, device="cpu", progress=False)
    # A crash after logging steps of the next epoch, before its checkpoint: those steps run again.
    with open(tmp_path / "part" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"kind": "step", "step": res_full["history"][0]["step"] + 3, "loss": -1.0}) + "\n")
    resumed = small_model(seed=99, loss="bce")  # a fresh object: everything must come from the checkpoint
    res_part = train_sasrec(resumed, split, cfg, tmp_path / "part", seed=3, device="cpu", progress=False)
    assert [r["loss"] for r in res_part["history"]] == [r["loss"] for r in res_full["history"]]
    assert res_part["best_epoch"] == res_full["best_epoch"]
    assert torch.equal(resumed.item_embeddings(), full.item_embeddings())

    def untimed(path):  # the log without its wall-clock fields
        return [{k: v for k, v in r.items() if k not in ("train_seconds", "valid_seconds", "samples_per_second")}
                for r in read_jsonl(path)]

    assert untimed(tmp_path / "part" / "metrics.jsonl") == untimed(tmp_path / "full" / "metrics.jsonl")
    assert sum(r["kind"] == "step" for r in read_jsonl(tmp_path / "full" / "metrics.jsonl")) > 3


def test_evaluation_equals_hand_computed_full_ranking():
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(num_items=NUM_ITEMS, d_model=16, max_len=6, dropout=0.0))
    rng = np.random.default_rng(1)
    history = rng.integers(0, NUM_ITEMS, size=(50, 6))
    history[:10, :4] = -1  # some short histories
    history[10, :] = -1  # and an empty one
    with torch.no_grad():
        scores = model.scores(torch.as_tensor(history)).numpy()  # (50, N)
    order = np.argsort(-scores, axis=1)
    # targets at known ranks: first for 10 users, fourth for 10, eighth for 10, random for the rest
    target = rng.integers(0, NUM_ITEMS, size=50)
    target[:10], target[10:20], target[20:30] = order[:10, 0], order[10:20, 3], order[20:30, 7]
    examples = Examples(history, target, np.arange(50))
    got = evaluate_sasrec(model, examples, ks=[1, 5, 10], batch_size=7)
    want = topk_metrics(order[:, :10], target, [1, 5, 10])
    assert got == pytest.approx(want)
    assert got["recall@1"] >= 0.2 and got["recall@5"] >= 0.4
    assert np.array_equal(rank_items(model, history, 10, batch_size=7), order[:, :10])


def test_item_embeddings_are_seeded_and_trained(tmp_path):
    ds = successor_dataset()
    cfg = SASRecTrainConfig(epochs=10, batch_size=32, lr=1e-2, max_steps=60)
    x = sasrec_item_embeddings(ds, dim=16, seed=5, out_dir=tmp_path / "a", train_cfg=cfg, progress=False)
    again = sasrec_item_embeddings(ds, dim=16, seed=5, out_dir=tmp_path / "b", train_cfg=cfg, progress=False)
    assert x.shape == (NUM_ITEMS, 16) and x.dtype == np.float32
    assert np.array_equal(x, again)
    torch.manual_seed(5)
    untrained = SASRec(SASRecConfig(num_items=NUM_ITEMS, d_model=16)).item_embeddings().numpy()
    assert np.abs(x - untrained).max() > 0.1


def test_baseline_reports_valid_and_test_metrics(tmp_path):
    ds = successor_dataset()
    model_cfg = SASRecConfig(num_items=NUM_ITEMS, d_model=32, max_len=10, dropout=0.1)
    train_cfg = SASRecTrainConfig(epochs=10, batch_size=32, lr=1e-2, max_steps=100)
    metrics = sasrec_baseline(ds, model_cfg, train_cfg, tmp_path, seed=0, ks=[1, 10], progress=False)
    keys = [f"sasrec.{p}.{m}@{k}" for p in ("valid", "test") for m in ("recall", "ndcg", "mrr")
            for k in (1, 10)]
    assert sorted(metrics) == sorted(keys)
    assert metrics["sasrec.test.recall@1"] > 0.8
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["sasrec.test.ndcg@10"] == metrics["sasrec.test.ndcg@10"]
    epochs = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["kind"] == "epoch"]  # beside metrics.json
    assert saved["best_epoch"] in [r["epoch"] for r in epochs] and not (tmp_path / "train" / "metrics.jsonl").exists()
    split = leave_one_out(ds, max_history=10)
    assert evaluate_sasrec(load_sasrec(tmp_path / "model"), split.test, ks=[1])["recall@1"] == (
        metrics["sasrec.test.recall@1"])
    with pytest.raises(ValueError, match="num_items"):
        sasrec_baseline(ds, SASRecConfig(num_items=5), train_cfg, tmp_path, seed=0)


def test_train_config_validation():
    with pytest.raises(ValueError, match="batch_size"):
        SASRecTrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="lr"):
        SASRecTrainConfig(lr=0.0)
    with pytest.raises(ValueError, match="log_every"):
        SASRecTrainConfig(log_every=-1)
