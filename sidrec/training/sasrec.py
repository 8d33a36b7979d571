"""Train and evaluate SASRec on a leave-one-out split, with full ranking over all items (METHODS 1.4, 7).

The same plain loop as the TIGER trainer: the training examples live as tensors on the device and each step
gathers a batch by index from a per-epoch seeded permutation. After every epoch, validation NDCG@10 over all
items selects the best weights (``best/``); training stops after ``patience`` epochs without improvement. A
checkpoint is written every epoch and a run resumes from the last one, restoring ``best/`` from the best snapshot
that checkpoint names (``sidrec.training.checkpoint.save_best``). ``metrics.jsonl`` has the same records as the
recommender's (``sidrec.training.metrics_log``): loss, learning rate and throughput every ``log_every`` steps,
and each epoch's summary with its validation metrics.

Ranking does not remove the user's history items, the same protocol as TIGER's beam search.

``sasrec_item_embeddings`` (collaborative embeddings for a tokenizer) and ``sasrec_baseline`` (the baseline
row of a run) wrap the two for a whole dataset.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from sidrec.data.dataset import Dataset
from sidrec.data.splits import Examples, LeaveOneOut, leave_one_out
from sidrec.eval.metrics import topk_metrics
from sidrec.models.sasrec import SASRec, SASRecConfig, save_sasrec
from sidrec.rundir import BaselineDir
from sidrec.training.checkpoint import BEST_KEY, publish_best, resume_checkpoint, save_best, save_checkpoint
from sidrec.training.metrics_log import MetricsLog
from sidrec.utils import atomic_write_json


@dataclass
class SASRecTrainConfig:
    """SASRec training: AdamW at a constant learning rate, early stopping on validation NDCG@10.

    Args:
        epochs: most passes over the training examples.
        batch_size: training examples per step.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        patience: epochs without a better validation NDCG@10 before stopping.
        eval_batch_size: users scored at once against all items during evaluation.
        max_steps: cap on optimiser steps (0 = none), for quick smoke runs.
        log_every: a "step" record in ``metrics.jsonl`` every this many steps (0 = epoch records only).

    Example:
        >>> cfg = SASRecTrainConfig(epochs=50, batch_size=128)
    """

    epochs: int = 200
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 10
    eval_batch_size: int = 1024
    max_steps: int = 0
    log_every: int = 50

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"SASRecTrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"SASRecTrainConfig.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.max_steps < 0 or self.log_every < 0:
            raise ValueError("SASRecTrainConfig.weight_decay, max_steps and log_every must be >= 0")


@torch.inference_mode()
def rank_items(model: SASRec, history: np.ndarray, k: int, batch_size: int = 1024) -> np.ndarray:
    """Top-``k`` items (U, k) for every left-padded history (U, H) by full ranking over all items.

    Example:
        >>> rank_items(model, np.array([[-1, 3, 7]]), k=5).shape
        (1, 5)
    """
    if not 1 <= k <= model.cfg.num_items:
        raise ValueError(f"k must be in [1, {model.cfg.num_items}] (the number of items), got {k}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(history), batch_size):
        hist = torch.as_tensor(history[start : start + batch_size], device=device)  # (B, H)
        out.append(model.scores(hist).topk(k, dim=1).indices.cpu().numpy())  # (B, k)
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, k), np.int64)


def evaluate_sasrec(model: SASRec, examples: Examples, ks: list[int] | tuple[int, ...] = (5, 10, 20),
                    batch_size: int = 1024) -> dict[str, float]:
    """Recall@K and NDCG@K of full ranking over all items (no sampled negatives, history not masked).

    Example:
        >>> evaluate_sasrec(model, split.test, ks=[10])
        {'recall@10': 0.071, 'ndcg@10': 0.042}
    """
    ranked = rank_items(model, examples.history, max(ks), batch_size)
    return topk_metrics(ranked, examples.target, list(ks))


def train_sasrec(
    model: SASRec,
    split: LeaveOneOut,
    cfg: SASRecTrainConfig,
    out_dir: str | Path,
    seed: int,
    device: str | torch.device,
    progress: bool = True,
    resume: bool = True,
    log: Callable[[dict[str, Any]], None] | None = None,
    log_path: str | Path | None = None,
) -> dict[str, Any]:
    """Fit ``model`` on ``split.train`` (history -> next item); keep the weights of the best validation epoch.

    Args:
        model: the SASRec to train (in place; it ends holding the best weights).
        split: leave-one-out examples; histories of any width (the model keeps the last ``max_len`` items).
        cfg: training settings.
        out_dir: where ``checkpoints/`` and ``best/`` (``save_sasrec`` format) go.
        seed: seeds dropout, the per-epoch batch order and the BCE negatives (derived per epoch, so a resumed
            run sees the same order).
        device: training device.
        progress: show a progress bar per epoch.
        resume: continue from the last checkpoint in ``out_dir`` if there is one; False starts over, removing
            the checkpoints and log of an earlier run there.
        log: called with each epoch's record (the per-step records only go to ``metrics.jsonl``).
        log_path: the ``metrics.jsonl`` file (default ``out_dir/metrics.jsonl``).

    Returns:
        ``{"best_epoch", "best_valid" (validation metrics @10), "epochs_run", "steps", "history"}``.

    Example:
        >>> model = SASRec(SASRecConfig(num_items=ds.num_items))
        >>> res = train_sasrec(model, leave_one_out(ds), SASRecTrainConfig(), "runs/sasrec", 0, "cuda")
    """
    out = Path(out_dir)
    device = torch.device(device)
    model.to(device)
    hist = torch.as_tensor(split.train.history, device=device)  # (S, H)
    target = torch.as_tensor(split.train.target, device=device)  # (S,)
    if len(target) == 0:
        raise ValueError("split.train has no examples to train SASRec on")
    steps_per_epoch = math.ceil(len(target) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    state: dict[str, Any] = {"epoch": 0, "step": 0, "best_epoch": -1, "best_valid": {}, "bad_evals": 0,
                             "history": [], BEST_KEY: None}
    ckpt_dir = out / "checkpoints"
    saved = resume_checkpoint(ckpt_dir, model, opt) if resume else None
    publish_best(ckpt_dir, saved, out / "best")  # best/ as of that checkpoint, not of a killed attempt
    if saved is not None:
        state = {k: saved.get(k, v) for k, v in state.items()}  # checkpoints of older versions lack BEST_KEY
    else:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    # Resuming drops the records written after the checkpoint (steps that will run again); a new run starts empty.
    metrics_log = MetricsLog(log_path or out / "metrics.jsonl", state["step"] if saved is not None else None)

    stopped = state["bad_evals"] >= cfg.patience or state["step"] >= total_steps
    while not stopped and state["epoch"] < cfg.epochs:
        epoch = state["epoch"]
        model.train()
        order = torch.randperm(len(target), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        order = order.to(device)
        negatives = torch.Generator(device=device).manual_seed(seed * 100_003 + epoch)
        t0, loss_sum, n_batches = time.perf_counter(), torch.zeros((), device=device), 0
        # The window of steps since the last "step" record (reset each epoch: validation time is not training).
        win_t0, win_loss, win_steps, win_samples = t0, torch.zeros((), device=device), 0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"sasrec epoch {epoch}", disable=not progress, leave=False)
        for b in bar:
            if state["step"] >= total_steps:
                break
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            loss = model.loss(hist[idx], target[idx], generator=negatives)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state["step"] += 1
            loss_sum += loss.detach()  # summed on the device: no host sync per step
            n_batches += 1
            win_loss += loss.detach()
            win_steps, win_samples = win_steps + 1, win_samples + len(idx)
            if cfg.log_every and state["step"] % cfg.log_every == 0:
                now = time.perf_counter()
                metrics_log.write({"kind": "step", "step": state["step"], "epoch": epoch,
                                   "loss": win_loss.item() / win_steps, "lr": opt.param_groups[0]["lr"],
                                   "samples_per_second": round(win_samples / max(now - win_t0, 1e-9), 1)})
                win_t0, win_loss, win_steps, win_samples = now, torch.zeros((), device=device), 0, 0
        train_time = time.perf_counter() - t0
        state["epoch"] = epoch + 1
        metrics = evaluate_sasrec(model, split.valid, ks=[10], batch_size=cfg.eval_batch_size)
        mean_loss = loss_sum.item() / max(n_batches, 1)
        samples = min(len(order), n_batches * cfg.batch_size)
        rec: dict[str, Any] = {"kind": "epoch", "epoch": epoch, "step": state["step"], "loss": mean_loss,
                               "lr": opt.param_groups[0]["lr"], "train_seconds": round(train_time, 2),
                               "samples_per_second": round(samples / max(train_time, 1e-9), 1)}
        rec.update({f"valid.{k}": v for k, v in metrics.items()})
        improved = metrics["ndcg@10"] > state["best_valid"].get("ndcg@10", -1.0)
        if improved:
            state.update(best_epoch=epoch, best_valid=metrics, bad_evals=0)
            state[BEST_KEY] = save_best(ckpt_dir, state["step"], lambda d: save_sasrec(model, d))
        else:
            state["bad_evals"] += 1
        state["history"].append(rec)
        metrics_log.write(rec)
        if log is not None:
            log(rec)
        save_checkpoint(ckpt_dir, state["step"], model, opt, state)
        if improved:
            publish_best(ckpt_dir, state, out / "best")
        stopped = state["bad_evals"] >= cfg.patience or state["step"] >= total_steps
    metrics_log.close()
    model.load_state_dict(load_file(str(out / "best" / "model.safetensors")))
    return {"best_epoch": state["best_epoch"], "best_valid": state["best_valid"],
            "epochs_run": state["epoch"], "steps": state["step"], "history": state["history"]}


def sasrec_item_embeddings(
    ds: Dataset,
    dim: int,
    seed: int,
    out_dir: str | Path,
    device: str | torch.device = "cpu",
    train_cfg: SASRecTrainConfig | None = None,
    progress: bool = True,
    resume: bool = True,
) -> np.ndarray:
    """Collaborative item embeddings (N, dim) float32: the item table of a SASRec trained on ``ds``.

    The model (SASRecConfig defaults, ``d_model = dim``) is trained on the leave-one-out training prefixes
    with histories of its ``max_len``; the test item of every user is never seen, the validation item only
    selects the epoch.

    Example:
        >>> x = sasrec_item_embeddings(ds, dim=32, seed=0, out_dir="cache/sasrec-emb", device="cuda")
        >>> x.shape
        (12101, 32)
    """
    torch.manual_seed(seed)
    model = SASRec(SASRecConfig(num_items=ds.num_items, d_model=dim))
    split = leave_one_out(ds, model.cfg.max_len)
    train_sasrec(model, split, train_cfg or SASRecTrainConfig(), out_dir, seed, device, progress, resume)
    return model.item_embeddings().cpu().numpy().astype(np.float32)


def sasrec_baseline(
    ds: Dataset,
    model_cfg: SASRecConfig,
    train_cfg: SASRecTrainConfig,
    out_dir: str | Path,
    seed: int,
    device: str | torch.device = "cpu",
    ks: list[int] | tuple[int, ...] = (5, 10, 20),
    progress: bool = True,
    resume: bool = True,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, float]:
    """Train SASRec on ``ds``, rank all items for every user; returns ``sasrec.{valid,test}.{recall,ndcg}@K``.

    Histories keep the last ``model_cfg.max_len`` items; the validation and test targets are the same
    leave-one-out items as any other model's. ``out_dir`` receives ``train/`` (checkpoints, best weights),
    ``metrics.jsonl`` (the training log), ``model/`` (``save_sasrec``) and ``metrics.json``.

    Example:
        >>> cfg = SASRecConfig(num_items=ds.num_items)
        >>> m = sasrec_baseline(ds, cfg, SASRecTrainConfig(), "runs/beauty/sasrec", seed=42, device="cuda")
        >>> m["sasrec.test.recall@10"]
        0.071
    """
    if model_cfg.num_items != ds.num_items:
        raise ValueError(f"SASRecConfig.num_items is {model_cfg.num_items}; "
                         f"dataset {ds.name!r} has {ds.num_items} items")
    out = BaselineDir(out_dir)
    torch.manual_seed(seed)
    model = SASRec(model_cfg)
    split = leave_one_out(ds, model_cfg.max_len)
    res = train_sasrec(model, split, train_cfg, out.training.root, seed, device, progress, resume, log,
                       log_path=out.training.log)
    save_sasrec(model, out.model)
    metrics: dict[str, float] = {}
    for part, examples in (("valid", split.valid), ("test", split.test)):
        m = evaluate_sasrec(model, examples, ks, train_cfg.eval_batch_size)
        metrics.update({f"sasrec.{part}.{k}": v for k, v in m.items()})
    protocol = {"split": "leave-one-out", "ranking": "full, all items", "max_history": model_cfg.max_len}
    record = {**metrics, "best_epoch": res["best_epoch"], "protocol": protocol}
    atomic_write_json(out.metrics, record)
    return metrics
