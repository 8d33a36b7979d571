"""Train a generative recommender on fixed semantic IDs (the two-stage schedule: tokenizer first, then this).

A plain loop in the nanoGPT spirit: the whole training set lives as tensors on the device (item histories and
the item -> SID table), each step gathers a batch by index, so there is no per-sample Python collation. Validation
NDCG@10 by constrained beam search selects the best epoch; training stops after ``patience`` evaluations without
improvement. Checkpoints are written every evaluation and a run resumes from the last one; ``best/`` is restored
from the best snapshot that checkpoint names (``sidrec.training.checkpoint.save_best``). ``metrics.jsonl``
records the loss, learning rate and throughput every ``log_every`` steps and each epoch's summary with its
validation metrics (``sidrec.training.metrics_log``).

Under torchrun (see ``sidrec.distributed``) the same loop runs data-parallel: every process draws the
same seeded epoch order, takes its slice of each global batch and DDP averages the gradients; only rank 0 writes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from sidrec import distributed as dist
from sidrec.data.splits import Examples, LeaveOneOut
from sidrec.decoding.trie import SidTrie
from sidrec.eval.evaluate import evaluate, model_inputs
from sidrec.tokenizers.base import Tokenizer
from sidrec.training.checkpoint import BEST_KEY, publish_best, resume_checkpoint, save_best, save_checkpoint
from sidrec.training.config import TrainConfig
from sidrec.training.metrics_log import MetricsLog
from sidrec.utils import atomic_write, atomic_write_json, bf16_autocast, crash_point


@dataclass
class TrainResult:
    best_epoch: int
    best_valid: dict[str, float]
    epochs_run: int
    history: list[dict[str, Any]]
    finished: bool  # False when the deadline stopped training early; call again to resume


class LossModule(torch.nn.Module):
    """``model.loss`` as a module's forward: DDP syncs gradients through hooks that its forward sets up."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.model.loss(ids, mask, target)


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the base learning rate at ``step`` (linear warm-up, then the chosen decay)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    if kind == "inverse_sqrt":
        return math.sqrt(max(warmup, 1) / max(step + 1, 1))
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class TrainingPlan(NamedTuple):
    """The training set as tensors on the device, the validation users and the step budget."""

    history: torch.Tensor  # (S, H) item indices, -1 = padding
    target: torch.Tensor  # (S,)
    user: torch.Tensor  # (S,)
    valid: Examples  # all validation users, or the seeded ``cfg.valid_users`` subset
    steps_per_epoch: int
    total_steps: int


def training_plan(split: LeaveOneOut, cfg: TrainConfig, seed: int, device: torch.device) -> TrainingPlan:
    """Tensorise the training prefixes on ``device`` and count the steps (shared by every schedule)."""
    valid = split.valid
    if cfg.valid_users and cfg.valid_users < len(valid):
        pick = np.random.default_rng(seed).choice(len(valid), cfg.valid_users, replace=False)
        valid = valid.subset(np.sort(pick))
    users_with_prefixes = int((np.bincount(split.train.user) > 0).sum())
    epoch_size = cfg.prefixes_per_user * users_with_prefixes if cfg.prefixes_per_user else len(split.train.target)
    steps_per_epoch = math.ceil(epoch_size / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    return TrainingPlan(torch.as_tensor(split.train.history, device=device),
                        torch.as_tensor(split.train.target, device=device),
                        torch.as_tensor(split.train.user, device=device), valid, steps_per_epoch, total_steps)


def train_recommender(
    model: torch.nn.Module,
    split: LeaveOneOut,
    item_sids: torch.Tensor,
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
        seed: seeds the epoch shuffles (derived per epoch, so a resumed run sees the same order) and dropout.
        resume: continue from the last complete checkpoint in ``out_dir`` if there is one.
        deadline: a ``time.time()`` after which training checkpoints (mid-epoch if need be) and returns
            ``finished=False``; calling again with ``resume=True`` continues exactly where it stopped.
        log: called with each epoch's record (the per-step records only go to ``metrics.jsonl``).
        tensorboard_dir: where TensorBoard event files go when ``cfg.tensorboard`` (default ``out_dir/tensorboard``).

    Returns:
        The best epoch, its validation metrics, and the per-epoch history.
    """
    out = Path(out_dir)
    device = item_sids.device
    model.to(device)
    hist, target, users, valid, steps_per_epoch, total_steps = training_plan(split, cfg, seed, device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    use_bf16 = bf16_autocast(device, cfg.bf16)
    lengths = torch.as_tensor((split.train.history >= 0).sum(1))  # (S,) items per training history
    world = dist.world_size()
    net = dist.wrap_ddp(LossModule(model), device)  # the module itself for one process
    if cfg.compile:  # same results, faster steps on GPU after a one-off compilation
        net = torch.compile(net)

    state: dict[str, Any] = {"epoch": 0, "batch": 0, "step": 0, "best_epoch": -1, "best_valid": {},
                             "bad_evals": 0, "history": [], BEST_KEY: None}
    ckpt_dir = out / "checkpoints"
    saved = resume_checkpoint(ckpt_dir, model, opt) if resume else None
    resumed = saved is not None
    if dist.is_main():
        publish_best(ckpt_dir, saved, out / "best")  # best/ as of that checkpoint, not of a killed attempt
    if resumed:
        state = {k: saved.get(k, v) for k, v in state.items()}  # checkpoints of older versions lack BEST_KEY
    else:
        torch.manual_seed(seed)

    out.mkdir(parents=True, exist_ok=True)
    tb_dir = (tensorboard_dir or out / "tensorboard") if cfg.tensorboard else None
    metrics_log = None  # rank 0 alone logs
    if dist.is_main():
        metrics_log = MetricsLog(out / "metrics.jsonl", state["step"] if resumed else None, tb_dir)

    def emit(rec: dict[str, Any]) -> None:
        if metrics_log is None:
            return
        metrics_log.write(rec)
        if log is not None:
            log(rec)

    stopped = state["bad_evals"] >= cfg.patience or state["step"] >= total_steps
    while not stopped and state["epoch"] < cfg.epochs:
        epoch = state["epoch"]
        model.train()
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = epoch_order(split.train.user, cfg.prefixes_per_user, gen)
        if cfg.length_buckets:
            order = bucket_by_length(order, lengths, cfg.batch_size, gen)
        order = order.to(device)
        t0, loss_sum, n_batches = time.perf_counter(), torch.zeros((), device=device), 0
        # The window of steps since the last "step" record (reset each epoch: validation time is not training).
        win_t0, win_loss, win_steps, win_samples = t0, torch.zeros((), device=device), 0, 0
        bar = tqdm(range(state["batch"], steps_per_epoch), desc=f"epoch {epoch}", disable=not progress, leave=False)
        for b in bar:
            if state["step"] >= total_steps:
                break
            if deadline is not None and dist.any_process(time.time() > deadline):
                state["batch"] = b
                if dist.is_main():
                    save_checkpoint(ckpt_dir, state["step"], model, opt, state)
                    metrics_log.close()
                dist.barrier()
                return TrainResult(state["best_epoch"], state["best_valid"], state["epoch"], state["history"], False)
            batch = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            part = dist.shard(len(batch))  # this process's slice of the global batch (all of it for one)
            # DDP averages gradients over processes; weighting each mean loss by its share of the global batch
            # makes that average the global batch mean, also when the last batch splits unevenly. A process with
            # no example (a batch smaller than the world) still joins the all-reduce, with weight 0.
            idx = batch[part.start : part.stop] if len(part) else batch[:1]
            weight = len(part) * world / len(batch)
            ids, mask = model_inputs(model, item_sids, hist[idx], users[idx])
            for g in opt.param_groups:
                g["lr"] = cfg.lr * lr_factor(state["step"], total_steps, cfg.warmup_steps, cfg.scheduler)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = net(ids, mask, item_sids[target[idx]]) * weight
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            state["step"] += 1
            crash_point("train.step")
            loss_sum += loss.detach()  # summed on the device: no host sync per step
            n_batches += 1
            win_loss += loss.detach()
            win_steps, win_samples = win_steps + 1, win_samples + len(batch)
            if cfg.log_every and state["step"] % cfg.log_every == 0:
                now = time.perf_counter()
                win_loss = dist.mean_over_processes(win_loss)  # the global batch's loss, as for one process
                if metrics_log is not None:
                    metrics_log.write({"kind": "step", "step": state["step"], "epoch": epoch,
                                       "loss": win_loss.item() / win_steps, "lr": opt.param_groups[0]["lr"],
                                       "samples_per_second": round(win_samples / max(now - win_t0, 1e-9), 1)})
                win_t0, win_loss, win_steps, win_samples = now, torch.zeros((), device=device), 0, 0
        train_time = time.perf_counter() - t0
        state["epoch"], state["batch"] = epoch + 1, 0
        samples = min(len(order), n_batches * cfg.batch_size)
        loss_sum = dist.mean_over_processes(loss_sum)
        rec: dict[str, Any] = {"kind": "epoch", "epoch": epoch, "step": state["step"],
                               "loss": loss_sum.item() / max(n_batches, 1), "lr": opt.param_groups[0]["lr"],
                               "train_seconds": round(train_time, 2),
                               "samples_per_second": round(samples / max(train_time, 1e-9), 1)}
        improved = False
        if (epoch + 1) % cfg.eval_every == 0 or state["epoch"] >= cfg.epochs or state["step"] >= total_steps:
            metrics = evaluate(model, valid, item_sids, trie, beam_size=cfg.eval_beam_size, ks=[10],
                               batch_size=cfg.eval_batch_size, progress=progress, desc="validate", bf16=cfg.bf16)
            rec.update({f"valid.{k}": v for k, v in metrics.items()})
            improved = metrics["ndcg@10"] > state["best_valid"].get("ndcg@10", -1.0)
            if improved:
                state.update(best_epoch=epoch, best_valid=metrics, bad_evals=0)
                if dist.is_main():
                    state[BEST_KEY] = save_best(ckpt_dir, state["step"],
                                                partial(write_best, model=model, epoch=epoch, metrics=metrics))
            else:
                state["bad_evals"] += 1
        state["history"].append(rec)
        emit(rec)
        if dist.is_main():
            save_checkpoint(ckpt_dir, state["step"], model, opt, state)
            if improved:
                publish_best(ckpt_dir, state, out / "best")
        stopped = state["bad_evals"] >= cfg.patience or state["step"] >= total_steps
    if metrics_log is not None:
        metrics_log.close()
    dist.barrier()  # the other processes may read what rank 0 wrote (best/) once this returns
    return TrainResult(state["best_epoch"], state["best_valid"], state["epoch"], state["history"], True)



def epoch_order(users: np.ndarray, per_user: int, gen: torch.Generator) -> torch.Tensor:
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


def bucket_by_length(order: torch.Tensor, lengths: torch.Tensor, batch_size: int, gen: torch.Generator,
                     pool_batches: int = 64) -> torch.Tensor:
    """Reorder an epoch (``order`` (n,), shuffled) so that each batch holds histories of about one length.

    Consecutive pools of ``pool_batches`` batches are sorted by history length (``lengths`` (S,) real items per
    example), cut into batches, and the full batches are shuffled (``gen``); a last partial batch stays last so
    that batch b is still ``result[b * batch_size : (b + 1) * batch_size]``. Every example still comes once per
    epoch and its loss is unchanged; only which examples share a batch changes. Trimming each batch to its
    longest history (``sidrec.eval.evaluate.trim_padding``) then removes most padding: a random batch of Beauty
    almost always holds a 20-item prefix, while the mean prefix has 6.7 items.

    Example:
        >>> order = bucket_by_length(torch.randperm(10), torch.arange(10) % 4, 2, torch.Generator().manual_seed(0))
    """
    pool = batch_size * pool_batches
    pools = [chunk[torch.argsort(lengths[chunk], stable=True)] for chunk in order.split(pool)]
    batches = torch.cat(pools).split(batch_size)
    full = [b for b in batches if len(b) == batch_size]
    shuffled = [full[i] for i in torch.randperm(len(full), generator=gen).tolist()]
    return torch.cat(shuffled + [b for b in batches if len(b) < batch_size])


def write_best(
    folder: Path, model: torch.nn.Module, epoch: int, metrics: dict[str, float], tokenizer: Tokenizer | None = None
) -> None:
    """The files of ``best/``: ``model.safetensors``, ``best.json`` (epoch, validation metrics), ``tokenizer/``.

    Example:
        >>> save_best(ckpt_dir, step, lambda d: write_best(d, model, epoch, {"ndcg@10": 0.1}))  # doctest: +SKIP
    """
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(folder / "model.safetensors", lambda p: save_file(sd, str(p)))
    if tokenizer is not None:
        tokenizer.save(folder / "tokenizer")
    atomic_write_json(folder / "best.json", {"epoch": epoch, "valid": metrics})
