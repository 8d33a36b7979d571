"""The one epoch loop of every training: the recommender on fixed SIDs (``two_stage``), the schedules that also
train the tokenizer (``schedules``) and the SASRec baseline (``sasrec``).

A ``TrainStep`` says what is trained: what a checkpoint holds (``module``, ``optimizer``), the loss of one batch,
how gradients are synced, how validation runs, what ``best/`` holds, and what an epoch adds to its record. The loop
does the rest, the same way for all: the seeded epoch order (length-bucketed with ``length_buckets``), bf16
autocast where it is fast, the learning-rate schedule of every optimiser group, gradient clipping, the
``metrics.jsonl`` records (``sidrec.training.metrics_log``), validation and early stopping, best snapshots,
checkpoints and resuming from them, and the time budget.

The whole training set lives as tensors on the device; each step gathers a batch by index, so there is no
per-sample Python collation. Validation NDCG@10 selects the best epoch; training stops after ``patience``
evaluations without improvement (those a step does not count, e.g. while a tokenizer still trains, excepted).
Checkpoints are written every epoch and a run resumes from the last one; ``best/`` is restored from the best
snapshot that checkpoint names (``sidrec.training.checkpoint.save_best``). A fresh start removes the checkpoints of
an earlier run in the same folder.

Under torchrun every process draws the same seeded epoch order and runs the step on the whole global batch's
indices; the step takes its share (``sidrec.distributed``). Only rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from sidrec import distributed as dist
from sidrec.rundir import TrainingDir
from sidrec.tokenizers.base import Tokenizer
from sidrec.training.checkpoint import BEST_KEY, publish_best, resume_checkpoint, save_best, save_checkpoint
from sidrec.training.metrics_log import MetricsLog
from sidrec.utils import atomic_write, atomic_write_json, bf16_autocast, crash_point


@dataclass
class LoopConfig:
    """The loop's settings: the same-named fields of a training config (``TrainConfig``, ``SASRecTrainConfig``);
    a config without one keeps the default here (no warm-up, constant rate, no clipping, validation every epoch).
    """

    epochs: int
    batch_size: int
    patience: int
    max_steps: int = 0
    log_every: int = 0
    eval_every: int = 1
    warmup_steps: int = 0
    scheduler: str = "constant"
    grad_clip: float = 0.0
    bf16: bool = False
    length_buckets: bool = False
    prefixes_per_user: int = 0
    tensorboard: bool = False

    @classmethod
    def of(cls, cfg: Any) -> LoopConfig:
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls) if hasattr(cfg, f.name)})


@dataclass
class TrainResult:
    best_epoch: int
    best_valid: dict[str, float]
    epochs_run: int
    history: list[dict[str, Any]]
    finished: bool  # False when the deadline stopped training early; call again to resume
    steps: int  # optimiser steps done


class TrainStep:
    """One kind of training, as the loop drives it. Subclasses set the attributes and implement ``losses``,
    ``validate`` and ``write_best``; the other hooks do nothing by default.

    Attributes:
        module: what a checkpoint holds (a model, or a module grouping several).
        optimizer: built with each group's base learning rate (the schedule scales every group by one factor).
        users: (S,) the user of each training example, grouped by user (``epoch_order``).
        lengths: (S,) real items in each example's history (``bucket_by_length``).
        device: where the batch indices go.
        loss_is_global: ``losses`` already returns the whole global batch's loss in every process (else the loop
            averages the logged losses over the processes).
        step_record: keys of ``start_epoch``'s fields that the per-step records repeat.
    """

    module: nn.Module
    optimizer: torch.optim.Optimizer
    users: np.ndarray
    lengths: Tensor
    device: torch.device
    loss_is_global: bool = False
    step_record: tuple[str, ...] = ()
    desc: str = "epoch"

    def after_resume(self) -> None:
        """Called once the checkpoint is loaded (or the fresh start seeded)."""

    def start_epoch(self, epoch: int) -> dict[str, Any]:
        """Set train/eval modes for ``epoch``; returns fields for its record (e.g. ``phase``)."""
        self.module.train()
        return {}

    def losses(self, idx: Tensor, step: int) -> dict[str, Tensor]:
        """The losses of the batch ``idx`` (B,) (global batch indices) at optimiser step ``step``; ``"total"`` is
        minimised, the others are logged as ``loss.<name>``. Runs under the loop's autocast."""
        raise NotImplementedError

    def clipped(self) -> list[nn.Parameter]:
        """The parameters whose gradient norm is clipped (and, for several processes, synced)."""
        return list(self.module.parameters())

    def sync_gradients(self, params: list[nn.Parameter]) -> None:
        """Make the gradients of ``params`` those of the global batch (DDP's hooks did it already by default)."""

    def end_epoch(self, epoch: int, rec: dict[str, Any]) -> None:
        """After the epoch's last step, before validation: may add fields to ``rec``."""

    def validate(self) -> dict[str, float]:
        """Validation metrics, with ``ndcg@10``."""
        raise NotImplementedError

    def write_best(self, folder: Path, epoch: int, metrics: dict[str, float]) -> None:
        """Fill ``folder`` with what ``best/`` holds for this epoch."""
        raise NotImplementedError

    def counts_for_patience(self, epoch: int) -> bool:
        """Whether an evaluation without improvement in ``epoch`` counts towards ``patience``."""
        return True

    def finish(self) -> None:
        """Called when the loop returns (finished or stopped by the deadline)."""


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the base learning rate at ``step`` (linear warm-up, then the chosen decay).

    Example:
        >>> [round(lr_factor(s, 10, 2, "cosine"), 3) for s in (0, 1, 2, 6)]
        [0.5, 1.0, 1.0, 0.5]
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    if kind == "inverse_sqrt":
        return math.sqrt(max(warmup, 1) / max(step + 1, 1))
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def epoch_order(users: np.ndarray, per_user: int, gen: torch.Generator) -> Tensor:
    """Indices of one epoch's training examples, shuffled.

    ``per_user == 0``: every example once. Otherwise ``per_user`` examples drawn uniformly (with replacement) from
    each user's prefixes, so long histories do not dominate an epoch and an epoch costs the same for every user.
    ``users`` (S,) must be grouped by user (as ``leave_one_out`` builds it).
    """
    n = len(users)
    if per_user == 0:
        return torch.randperm(n, generator=gen)
    counts = torch.as_tensor(np.bincount(users))  # (U,)
    has = torch.nonzero(counts > 0).squeeze(1)
    offsets = torch.cumsum(counts, 0) - counts  # first example of each user
    u = has.repeat_interleave(per_user)  # (U' * per_user,)
    pick = offsets[u] + (torch.rand(len(u), generator=gen) * counts[u]).long()
    return pick[torch.randperm(len(pick), generator=gen)]


def bucket_by_length(order: Tensor, lengths: Tensor, batch_size: int, gen: torch.Generator,
                     pool_batches: int = 64) -> Tensor:
    """Reorder an epoch (``order`` (n,), shuffled) so that each batch holds histories of about one length.

    Consecutive pools of ``pool_batches`` batches are sorted by history length (``lengths`` (S,) real items per
    example), cut into batches, and the full batches are shuffled (``gen``); a last partial batch stays last so
    that batch b is still ``result[b * batch_size : (b + 1) * batch_size]``. Every example still comes once per
    epoch and its loss is unchanged; only which examples share a batch changes. Trimming each batch to its
    longest history (``sidrec.eval.evaluate.trim_padding``) then removes most padding (see docs/benchmarks.md).

    Example:
        >>> order = bucket_by_length(torch.randperm(10), torch.arange(10) % 4, 2, torch.Generator().manual_seed(0))
        >>> sorted(order.tolist()) == list(range(10))
        True
    """
    pool = batch_size * pool_batches
    pools = [chunk[torch.argsort(lengths[chunk], stable=True)] for chunk in order.split(pool)]
    batches = torch.cat(pools).split(batch_size)
    full = [b for b in batches if len(b) == batch_size]
    shuffled = [full[i] for i in torch.randperm(len(full), generator=gen).tolist()]
    return torch.cat(shuffled + [b for b in batches if len(b) < batch_size])


def write_best(
    folder: Path, model: nn.Module, epoch: int, metrics: dict[str, float], tokenizer: Tokenizer | None = None
) -> None:
    """The files of a recommender's ``best/``: ``model.safetensors``, ``best.json`` (epoch, validation metrics),
    and ``tokenizer/`` when the tokenizer trained too.

    Example:
        >>> save_best(ckpt_dir, step, lambda d: write_best(d, model, epoch, {"ndcg@10": 0.1}))  # doctest: +SKIP
    """
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(folder / "model.safetensors", lambda p: save_file(sd, str(p)))
    if tokenizer is not None:
        tokenizer.save(folder / "tokenizer")
    atomic_write_json(folder / "best.json", {"epoch": epoch, "valid": metrics})


def train_epochs(
    step: TrainStep,
    cfg: LoopConfig,
    out: TrainingDir,
    seed: int,
    resume: bool = True,
    progress: bool = True,
    log: Callable[[dict[str, Any]], None] | None = None,
    deadline: float | None = None,
    tensorboard_dir: str | Path | None = None,
) -> TrainResult:
    """Run ``step``'s training until ``cfg.epochs``, ``cfg.max_steps`` or ``cfg.patience`` ends it.

    Args:
        step: what is trained.
        cfg: epochs, batches, schedule, logging (``LoopConfig.of(train_config)``).
        out: where ``checkpoints/``, ``best/`` and the log go.
        seed: seeds the epoch orders (derived per epoch, so a resumed run sees the same order) and, on a fresh
            start, torch's RNG (dropout).
        resume: continue from the newest intact checkpoint in ``out`` if there is one.
        log: called with each epoch's record (the per-step records only go to the log file).
        deadline: a ``time.time()`` after which training checkpoints (mid-epoch if need be) and returns
            ``finished=False``; calling again with ``resume=True`` continues exactly where it stopped.
        tensorboard_dir: where TensorBoard event files go when ``cfg.tensorboard`` (default ``out/tensorboard``).
    """
    ckpt_dir, opt = out.checkpoints, step.optimizer
    base_lrs = [g["lr"] for g in opt.param_groups]  # before a checkpoint's (scheduled) rates are loaded
    users_with_examples = int((np.bincount(step.users) > 0).sum()) if len(step.users) else 0
    epoch_size = cfg.prefixes_per_user * users_with_examples if cfg.prefixes_per_user else len(step.users)
    steps_per_epoch = math.ceil(epoch_size / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    use_bf16 = bf16_autocast(step.device, cfg.bf16)

    state: dict[str, Any] = {"epoch": 0, "batch": 0, "step": 0, "best_epoch": -1, "best_valid": {},
                             "bad_evals": 0, "history": [], BEST_KEY: None}
    saved = resume_checkpoint(ckpt_dir, step.module, opt) if resume else None  # the newest intact checkpoint
    if saved is None and dist.is_main():
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # an earlier run's checkpoints must not outlive a fresh start
    if dist.is_main():
        publish_best(ckpt_dir, saved, out.best)  # best/ as of that checkpoint, not of a killed attempt
    if saved is not None:
        state = {k: saved.get(k, v) for k, v in state.items()}  # checkpoints of older versions lack BEST_KEY
    else:
        torch.manual_seed(seed)
    step.after_resume()

    out.root.mkdir(parents=True, exist_ok=True)
    tb_dir = (tensorboard_dir or out.root / "tensorboard") if cfg.tensorboard else None
    metrics_log = None  # rank 0 alone logs
    if dist.is_main():
        # Resuming drops the records written after the checkpoint (steps that will run again).
        metrics_log = MetricsLog(out.log, state["step"] if saved is not None else None, tb_dir)

    def finish(done: bool) -> TrainResult:
        if metrics_log is not None:
            metrics_log.close()
        dist.barrier()  # the other processes may read what rank 0 wrote (best/) once this returns
        step.finish()
        return TrainResult(state["best_epoch"], state["best_valid"], state["epoch"], state["history"], done,
                           state["step"])

    def global_mean(value: Tensor) -> Tensor:
        return value if step.loss_is_global else dist.mean_over_processes(value)

    stopped = state["bad_evals"] >= cfg.patience or state["step"] >= total_steps
    while not stopped and state["epoch"] < cfg.epochs:
        epoch = state["epoch"]
        fields = step.start_epoch(epoch)
        params = step.clipped()  # what trains this epoch
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = epoch_order(step.users, cfg.prefixes_per_user, gen)
        if cfg.length_buckets:
            order = bucket_by_length(order, step.lengths, cfg.batch_size, gen)
        order = order.to(step.device)
        t0, sums, n_batches = time.perf_counter(), {}, 0
        # The window of steps since the last "step" record (reset each epoch: validation time is not training).
        win_t0, win_loss, win_steps, win_samples = t0, torch.zeros((), device=step.device), 0, 0
        desc = f"{step.desc} {epoch}" + (f" ({fields['phase']})" if "phase" in fields else "")
        for b in tqdm(range(state["batch"], steps_per_epoch), desc=desc, disable=not progress, leave=False):
            if state["step"] >= total_steps:
                break
            if deadline is not None and dist.any_process(time.time() > deadline):
                state["batch"] = b
                if dist.is_main():
                    save_checkpoint(ckpt_dir, state["step"], step.module, opt, state)
                return finish(False)
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            factor = lr_factor(state["step"], total_steps, cfg.warmup_steps, cfg.scheduler)
            for group, base in zip(opt.param_groups, base_lrs, strict=True):  # every group: warm-up and decay
                group["lr"] = base * factor
            with torch.autocast(step.device.type, dtype=torch.bfloat16, enabled=use_bf16):
                losses = step.losses(idx, state["step"])
            opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            step.sync_gradients(params)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            state["step"] += 1
            crash_point("train.step")
            for name, value in losses.items():  # summed on the device: no host sync per step
                sums[name] = sums.get(name, 0.0) + value.detach()
            n_batches += 1
            win_loss += losses["total"].detach()
            win_steps, win_samples = win_steps + 1, win_samples + len(idx)
            if cfg.log_every and state["step"] % cfg.log_every == 0:
                now = time.perf_counter()
                win_loss = global_mean(win_loss)  # the global batch's loss, as for one process
                if metrics_log is not None:
                    metrics_log.write({"kind": "step", "step": state["step"], "epoch": epoch,
                                       **{k: fields[k] for k in step.step_record},
                                       "loss": win_loss.item() / win_steps, "lr": opt.param_groups[0]["lr"],
                                       "samples_per_second": round(win_samples / max(now - win_t0, 1e-9), 1)})
                win_t0, win_loss, win_steps, win_samples = now, torch.zeros((), device=step.device), 0, 0
        train_time = time.perf_counter() - t0
        state["epoch"], state["batch"] = epoch + 1, 0
        samples = min(len(order), n_batches * cfg.batch_size)
        sums = {k: global_mean(v) for k, v in sums.items()}
        rec: dict[str, Any] = {"kind": "epoch", "epoch": epoch, "step": state["step"], **fields,
                               "loss": float(sums["total"]) / max(n_batches, 1) if sums else 0.0,
                               "lr": opt.param_groups[0]["lr"], "train_seconds": round(train_time, 2),
                               "samples_per_second": round(samples / max(train_time, 1e-9), 1)}
        rec.update({f"loss.{k}": float(v) / max(n_batches, 1) for k, v in sums.items() if k != "total"})
        step.end_epoch(epoch, rec)
        improved = False
        if (epoch + 1) % cfg.eval_every == 0 or state["epoch"] >= cfg.epochs or state["step"] >= total_steps:
            t_valid = time.perf_counter()
            metrics = step.validate()
            rec.update({f"valid.{k}": v for k, v in metrics.items()},
                       valid_seconds=round(time.perf_counter() - t_valid, 2))
            improved = metrics["ndcg@10"] > state["best_valid"].get("ndcg@10", -1.0)
            if improved:
                state.update(best_epoch=epoch, best_valid=metrics, bad_evals=0)
                if dist.is_main():
                    state[BEST_KEY] = save_best(ckpt_dir, state["step"],
                                                partial(step.write_best, epoch=epoch, metrics=metrics))
            elif step.counts_for_patience(epoch):
                state["bad_evals"] += 1
        state["history"].append(rec)
        if metrics_log is not None:
            metrics_log.write(rec)
            if log is not None:
                log(rec)
        if dist.is_main():
            save_checkpoint(ckpt_dir, state["step"], step.module, opt, state)
            if improved:
                publish_best(ckpt_dir, state, out.best)
        stopped = state["bad_evals"] >= cfg.patience or state["step"] >= total_steps
    return finish(True)
