"""Train and evaluate SASRec on a leave-one-out split, with full ranking over all items (METHODS 1.4, 7).

``SASRecStep`` is trained by the same loop as the recommenders (``sidrec.training.loop``): AdamW at a constant
rate, a per-epoch seeded permutation of the training examples, validation NDCG@10 over all items after every epoch
selecting ``best/``, early stopping after ``patience`` epochs without improvement, a checkpoint every epoch to
resume from, and the same ``metrics.jsonl`` records (``sidrec.training.metrics_log``). Length-bucketed batches and
bf16 are not used here: SASRec reads histories of any padding width the same way, but batches of other examples
or another precision would change its results.

Ranking does not remove the user's history items, the same protocol as TIGER's beam search.

``sasrec_item_embeddings`` (collaborative embeddings for a tokenizer) and ``sasrec_baseline`` (the baseline
row of a run) wrap the two for a whole dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor

from sidrec.data.dataset import Dataset
from sidrec.data.splits import Examples, LeaveOneOut, leave_one_out
from sidrec.eval.evaluate import trim_padding
from sidrec.eval.metrics import topk_metrics
from sidrec.models.sasrec import SASRec, SASRecConfig, save_sasrec
from sidrec.rundir import BaselineDir, TrainingDir
from sidrec.training.loop import LoopConfig, TrainStep, train_epochs
from sidrec.utils import adamw, atomic_write_json


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
        length_buckets: batches of similar history length, each cut to its longest history (as ``train.`` for
            the recommender; SASRec's state does not depend on the padding width, so no example's loss changes).
        bf16: bf16 autocast for training where it is fast (CUDA, or a CPU with native bf16: AMX or AVX512-BF16); evaluation stays fp32.

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
    length_buckets: bool = True
    bf16: bool = True

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
        >>> model = SASRec(SASRecConfig(num_items=10, d_model=8))
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
    """Recall@K, NDCG@K and MRR@K of full ranking over all items (no sampled negatives, history not masked).

    Example:
        >>> from sidrec.data.dataset import Dataset
        >>> ds = Dataset("t", list("abcdef"), ["u", "v"], [np.array([0, 1, 2, 3]), np.array([4, 5, 0, 1])])
        >>> sorted(evaluate_sasrec(SASRec(SASRecConfig(num_items=6, d_model=8)), leave_one_out(ds).test, ks=[5]))
        ['mrr@5', 'ndcg@5', 'recall@5']
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
        >>> model = SASRec(SASRecConfig(num_items=ds.num_items))  # doctest: +SKIP
        >>> res = train_sasrec(model, leave_one_out(ds), SASRecTrainConfig(), "runs/sasrec", 0, "cuda")  # doctest: +SKIP
    """
    step = SASRecStep(model, split, cfg, seed, torch.device(device))
    res = train_epochs(step, LoopConfig.of(cfg), TrainingDir(out_dir, log=log_path), seed, resume=resume,
                       progress=progress, log=log)
    model.load_state_dict(load_file(str(TrainingDir(out_dir).best_model)))
    return {"best_epoch": res.best_epoch, "best_valid": res.best_valid, "epochs_run": res.epochs_run,
            "steps": res.steps, "history": res.history}


class SASRecStep(TrainStep):
    """SASRec on item IDs: next-item loss over all items (``ce``) or against sampled negatives (``bce``, drawn from
    a generator seeded per epoch); validation ranks all items."""

    desc = "sasrec epoch"

    def __init__(self, model: SASRec, split: LeaveOneOut, cfg: SASRecTrainConfig, seed: int, device: torch.device):
        self.device, self.seed, self.cfg, self.split = device, seed, cfg, split
        self.module = model.to(device)
        self.history = torch.as_tensor(split.train.history, device=device)  # (S, H)
        self.target = torch.as_tensor(split.train.target, device=device)  # (S,)
        if len(self.target) == 0:
            raise ValueError("split.train has no examples to train SASRec on")
        self.users = split.train.user
        self.lengths = torch.as_tensor((split.train.history >= 0).sum(1))  # (S,)
        self.optimizer = adamw(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def start_epoch(self, epoch: int) -> dict[str, Any]:
        self.module.train()
        self.negatives = torch.Generator(device=self.device).manual_seed(self.seed * 100_003 + epoch)
        return {}

    def losses(self, idx: Tensor, step: int) -> dict[str, Tensor]:
        history = trim_padding(self.history[idx])  # (b, H') cut to the batch's longest history
        return {"total": self.module.loss(history, self.target[idx], generator=self.negatives)}

    def validate(self) -> dict[str, float]:
        return evaluate_sasrec(self.module, self.split.valid, ks=[10], batch_size=self.cfg.eval_batch_size)

    def write_best(self, folder: Path, epoch: int, metrics: dict[str, float]) -> None:
        save_sasrec(self.module, folder)


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
        >>> x = sasrec_item_embeddings(ds, dim=32, seed=0, out_dir="cache/sasrec-emb", device="cuda")  # doctest: +SKIP
        >>> x.shape  # doctest: +SKIP
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
        >>> cfg = SASRecConfig(num_items=ds.num_items)  # doctest: +SKIP
        >>> m = sasrec_baseline(ds, cfg, SASRecTrainConfig(), "runs/beauty/sasrec", seed=42, device="cuda")  # doctest: +SKIP
        >>> sorted(k for k in m if k.startswith("sasrec.test."))[:2]  # doctest: +SKIP
        ['sasrec.test.mrr@10', 'sasrec.test.ndcg@10']
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
