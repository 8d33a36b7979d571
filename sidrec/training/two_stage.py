"""Train a generative recommender on fixed semantic IDs (the two-stage schedule: tokenizer first, then this).

``RecommenderStep`` is the ``sidrec.training.loop`` step: per-token cross-entropy of the target item's SID given
the SID history. Under torchrun (see ``sidrec.distributed``) it runs data-parallel: every process takes its slice
of each seeded global batch and DDP averages the gradients; only rank 0 writes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from sidrec import distributed as dist
from sidrec.data.splits import Examples, LeaveOneOut
from sidrec.decoding.trie import SidTrie
from sidrec.eval.evaluate import evaluate, model_inputs
from sidrec.rundir import TrainingDir
from sidrec.training.config import TrainConfig
from sidrec.training.loop import LoopConfig, TrainResult, TrainStep, train_epochs, write_best
from sidrec.utils import adamw


class LossModule(nn.Module):
    """``model.loss`` as a module's forward: DDP syncs gradients through hooks that its forward sets up."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: Tensor, mask: Tensor, target: Tensor) -> Tensor:
        return self.model.loss(ids, mask, target)


class TrainingData(NamedTuple):
    """A recommender's training set as tensors on the device, and its validation users."""

    history: Tensor  # (S, H) item indices, -1 = padding
    target: Tensor  # (S,)
    user: Tensor  # (S,)
    valid: Examples  # all validation users, or the seeded ``cfg.valid_users`` subset


def training_data(split: LeaveOneOut, cfg: TrainConfig, seed: int, device: torch.device) -> TrainingData:
    """Tensorise the training prefixes on ``device`` and pick the validation users (shared by every schedule)."""
    valid = split.valid
    if cfg.valid_users and cfg.valid_users < len(valid):
        pick = np.random.default_rng(seed).choice(len(valid), cfg.valid_users, replace=False)
        valid = valid.subset(np.sort(pick))
    return TrainingData(torch.as_tensor(split.train.history, device=device),
                        torch.as_tensor(split.train.target, device=device),
                        torch.as_tensor(split.train.user, device=device), valid)


class RecommenderStep(TrainStep):
    """The recommender on a fixed SID table: its checkpoint holds the model."""

    def __init__(self, model: nn.Module, split: LeaveOneOut, item_sids: Tensor, trie: SidTrie, cfg: TrainConfig,
                 seed: int, progress: bool):
        self.device = item_sids.device
        self.module = model.to(self.device)
        self.item_sids, self.trie, self.cfg, self.progress = item_sids, trie, cfg, progress
        self.data = training_data(split, cfg, seed, self.device)
        self.users = split.train.user
        self.lengths = torch.as_tensor((split.train.history >= 0).sum(1))  # (S,) items per training history
        self.optimizer = adamw(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.net = dist.wrap_ddp(LossModule(model), self.device)  # the module itself for one process
        if cfg.compile:  # same results, faster steps on GPU after a one-off compilation
            self.net = torch.compile(self.net)

    def losses(self, idx: Tensor, step: int) -> dict[str, Tensor]:
        part = dist.shard(len(idx))  # this process's slice of the global batch (all of it for one)
        # DDP averages gradients over processes; weighting each mean loss by its share of the global batch makes
        # that average the global batch mean, also when the last batch splits unevenly. A process with no example
        # (a batch smaller than the world) still joins the all-reduce, with weight 0.
        mine = idx[part.start : part.stop] if len(part) else idx[:1]
        weight = len(part) * dist.world_size() / len(idx)
        d = self.data
        ids, mask = model_inputs(self.module, self.item_sids, d.history[mine], d.user[mine])
        return {"total": self.net(ids, mask, self.item_sids[d.target[mine]]) * weight}

    def validate(self) -> dict[str, float]:
        c = self.cfg
        return evaluate(self.module, self.data.valid, self.item_sids, self.trie, beam_size=c.eval_beam_size, ks=[10],
                        batch_size=c.eval_batch_size, progress=self.progress, desc="validate", bf16=c.bf16)

    def write_best(self, folder: Path, epoch: int, metrics: dict[str, float]) -> None:
        write_best(folder, self.module, epoch, metrics)


def train_recommender(
    model: nn.Module,
    split: LeaveOneOut,
    item_sids: Tensor,
    trie: SidTrie,
    cfg: TrainConfig,
    out_dir: str | Path,
    seed: int,
    resume: bool = True,
    progress: bool = True,
    log: Callable[[dict[str, Any]], None] | None = None,
    deadline: float | None = None,
    tensorboard_dir: str | Path | None = None,
) -> TrainResult:
    """Fit ``model`` with per-token cross-entropy on the training prefixes; keep the best validation epoch.

    Args:
        model: a recommender with ``encoder_inputs``, ``loss`` and the decoding API (e.g. ``Tiger``).
        split: leave-one-out examples (item indices).
        item_sids: (N, Lc) SID of every item, on the training device.
        trie: the SID trie used for constrained validation decoding (on the same device).
        cfg: training settings (``batch_size`` is the global batch, split across torchrun's processes).
        out_dir: where ``checkpoints/``, ``best/model.safetensors`` and ``metrics.jsonl`` go.
        seed, resume, progress, log, deadline, tensorboard_dir: as in ``sidrec.training.loop.train_epochs``.

    Returns:
        The best epoch, its validation metrics, and the per-epoch history.
    """
    step = RecommenderStep(model, split, item_sids, trie, cfg, seed, progress)
    return train_epochs(step, LoopConfig.of(cfg), TrainingDir(out_dir), seed, resume=resume, progress=progress,
                        log=log, deadline=deadline, tensorboard_dir=tensorboard_dir)



