"""Training schedules for a tokenizer and a generative recommender: two-stage, alternating and fully joint.

- ``two_stage`` (default): the tokenizer is fitted first and frozen; the recommender trains on its fixed SIDs.
  Without extra losses this is exactly ``sidrec.training.two_stage.train_recommender``.
- ``alternating`` (ETEGRec, SODA): cycles of ``cycle_epochs`` epochs. The first epoch of a cycle is a tokenizer
  phase (recommender frozen), the others are recommender phases (tokenizer frozen); item codes are recomputed
  after every tokenizer phase. The last ``finetune_epochs`` epochs train the recommender only.
- ``joint``: tokenizer and recommender train together every epoch (the "no alternation" ablation, DIGER); codes
  are recomputed after every epoch, then ``finetune_epochs`` recommender-only epochs.

Every phase minimises the same objective, ``L_REC + L_SQ + mu L_SIA + lambda L_PSA + gamma L_SODA``; a phase only
chooses which side is trainable (``requires_grad``, train/eval mode), so a term reaches a side exactly when it has
a gradient path to it. While the tokenizer trains, L_REC goes through its ``wrap_task_loss`` (identity except for
DIGER's SDUD, which ties its noise scale to the task loss). L_REC reaches the tokenizer only with ``soft_codes``:
the recommender then embeds SID tokens as ``Assignment.onehot @ token rows`` (straight-through for DIGER). The
alignment losses are off during the first ``warmup_epochs`` epochs. Early stopping (``train.patience``) applies
only once the tokenizer is frozen for good (fine-tune epochs, or two-stage), because a tokenizer phase may lower
validation before the recommender adapts.

The best validation epoch's recommender and tokenizer are kept in ``best/`` (``model.safetensors``,
``tokenizer/``); checkpoints hold both sides, the current SID table, the optimiser (safetensors + JSON) and the
name of their best snapshot, from which ``best/`` is restored on resume.

Under torchrun (``sidrec run CONFIG --nproc N``, see ``sidrec.distributed``) every process draws the same
seeded epoch order and runs the recommender on its shard of each global batch, as two-stage training does; the
losses are those of the whole batch (``joint_losses``) and one all-reduce averages the gradients of whichever side
trains, so all processes stay identical and follow the single-process run step for step (up to float summation
order; with dropout on, each process draws its own masks). Only rank 0 writes; validation splits the users.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sidrec import distributed as dist
from sidrec.data.splits import LeaveOneOut
from sidrec.decoding.trie import SidTrie
from sidrec.eval.evaluate import evaluate, model_inputs, trim_padding
from sidrec.models.tiger import Tiger
from sidrec.rundir import TrainingDir
from sidrec.tokenizers.base import SIDS_FILE, Assignment, Tokenizer, codebook_health
from sidrec.training.config import ScheduleConfig, TrainConfig
from sidrec.training.loop import LoopConfig, TrainResult, TrainStep, train_epochs, write_best
from sidrec.training.losses import level_normalized, psa_loss, sia_loss, soda_candidates, soda_loss
from sidrec.training.two_stage import training_data
from sidrec.utils import adamw, atomic_write, save_npy


class JointState(nn.Module):
    """Everything a joint checkpoint holds: the recommender, the tokenizer and the current SID table (N, Lc)."""

    def __init__(self, recommender: nn.Module, tokenizer: Tokenizer, item_sids: Tensor):
        super().__init__()
        self.recommender = recommender
        self.tokenizer = tokenizer
        self.register_buffer("item_sids", item_sids.clone())


def semantic_ids_for(tokenizer: Tokenizer, item_emb: Tensor, model: Tiger) -> Tensor:
    """The tokenizer's SIDs (N, L + 1) of every item; RuntimeError if a collision group outgrows the model.

    ``tokenizer.semantic_ids`` is the one function that turns a tokenizer into SIDs: training, validation, the saved
    ``tokenizer/sids.npy`` (``pipeline.Run._save_tokenizer``), serving and test all read its output, so LETTER's
    collision repair applies everywhere alike.

    The recommender's last (dedup) level has a fixed size, so a tokenizer update that makes more items share one
    code tuple than that size cannot be represented; this is reported instead of silently truncated.
    """
    sids = tokenizer.semantic_ids(item_emb)
    capacity = model.cfg.level_sizes[-1]
    if int(sids[:, -1].max()) >= capacity:
        raise RuntimeError(
            f"{int(sids[:, -1].max()) + 1} items share one code tuple, more than the recommender's dedup level "
            f"holds ({capacity}): the codebook is collapsing; lower schedule.tokenizer_lr or raise "
            "schedule.dedup_capacity"
        )
    return sids


def write_joint_best(folder: Path, model: nn.Module, epoch: int, metrics: dict[str, float], tokenizer: Tokenizer,
                     item_sids: Tensor) -> None:
    """``write_best``'s files plus ``tokenizer/sids.npy``: the SID table (N, Lc) this epoch trained and validated on,
    which the pipeline saves and tests as it is (rather than recomputing it from the tokenizer)."""
    write_best(folder, model, epoch, metrics, tokenizer)
    table = item_sids.detach().cpu().numpy()
    atomic_write(folder / "tokenizer" / SIDS_FILE, lambda p: save_npy(p, table))


def set_phase(model: nn.Module, tokenizer: nn.Module, phase: str, schedule: ScheduleConfig | None = None) -> None:
    """Make the side(s) that train in ``phase`` trainable (train mode, requires_grad) and freeze the other.

    ``schedule.frozen_tokenizer_layers`` keeps the bottom linear layers of the tokenizer's encoder frozen (no
    gradient) even when the tokenizer trains (DIGER's reference ``freeze_id_encoder``).
    """
    train_rec, train_tok = phase in ("recommender", "joint"), phase in ("tokenizer", "joint")
    model.train(train_rec).requires_grad_(train_rec)
    tokenizer.train(train_tok).requires_grad_(train_tok)
    if schedule is None or schedule.frozen_tokenizer_layers == 0:
        return
    linears = [m for m in tokenizer.encoder.modules() if isinstance(m, nn.Linear)]
    count = len(linears) if schedule.frozen_tokenizer_layers < 0 else schedule.frozen_tokenizer_layers
    for linear in linears[:count]:
        linear.requires_grad_(False)


def joint_losses(
    model: Tiger,
    tokenizer: Tokenizer,
    item_emb: Tensor,
    item_sids: Tensor,
    history: Tensor,
    users: Tensor,
    target: Tensor,
    schedule: ScheduleConfig,
    aligned: bool,
    rows: range | None = None,
    draw_seed: int | None = None,
) -> dict[str, Tensor]:
    """The loss terms of one batch (unweighted) and ``"total"``, the weighted sum every phase minimises.

    The tokenizer pass and every loss cover the whole batch; the recommender pass covers ``rows``. Under torchrun
    each process passes its ``dist.shard(B)``: the recommender outputs of the other rows come from the other
    processes (``dist.gather_shards``), so every process returns the loss of the whole batch, and after
    ``dist.average_gradients`` every process holds its exact gradient. The cross-row terms (SODA's in-batch
    negatives, PSA's InfoNCE, the tokenizer loss over the batch's unique items, SDUD's wrapping of L_REC) thus
    need no per-process approximation; the tokenizer, which is small, runs on the whole batch in every process.

    Args:
        model: the recommender (``Tiger`` or ``ETEGRec``).
        tokenizer: a tokenizer with ``assign`` (``sidrec.tokenizers.Assignment``).
        item_emb: (N, D) item embeddings, the tokenizer's input.
        item_sids: (N, Lc) the current SID table (L learned levels + dedup).
        history: (B, H) item histories, -1 = padding; users: (B,); target: (B,) next items.
        schedule: which losses, their weights, and ``soft_codes``.
        aligned: include the alignment losses (False during warm-up).
        rows: the rows of the batch whose recommender pass runs here (default all of them).
        draw_seed: when set, the random draws of the whole-batch part (sampled negatives, the tokenizer's noise
            and dropout) restart from it (``dist.same_random_draws``), so that every process draws the same.

    Returns:
        ``{"rec": L_REC, "sq": the tokenizer's own loss and "tok.<term>" its weighted parts (when the tokenizer
        trains), "sia"/"psa"/"soda" (when on), "total"}``.

    Example:
        >>> out = joint_losses(model, tok, emb, sids, hist, users, target, schedule, aligned=True)  # doctest: +SKIP
        >>> out["total"].backward()  # doctest: +SKIP
    """
    losses = schedule.losses
    soda = losses.soda if aligned else None
    sia = losses.sia if aligned else None
    psa = losses.psa if aligned else None
    local = slice(0, len(target)) if rows is None else slice(rows.start, rows.stop)
    history = trim_padding(history)  # (B, H') as model_inputs trims it, so the soft one-hots line up
    need_assign = tokenizer.training or schedule.soft_codes or any(x is not None for x in (soda, sia, psa))
    a: Assignment | None = None
    candidates = negative = None
    if need_assign:
        with dist.same_random_draws(draw_seed, item_emb.device):
            parts = [target]
            if schedule.soft_codes:
                parts.append(history.clamp(min=0).flatten())
            if soda is not None:
                candidates, negative = soda_candidates(target, item_emb.shape[0], soda)
                parts.append(candidates)
            uniq = torch.unique(torch.cat(parts))
            with torch.autocast(item_emb.device.type, enabled=False):  # distances and codes in fp32, as encode()
                # one tokenizer pass over every item the batch touches, with the tokenizer's full loss (LETTER's
                # L_CF reads the rows' collaborative embeddings, hence items=uniq)
                a = tokenizer.assign(item_emb[uniq].float(), items=uniq)
        row = torch.empty(item_emb.shape[0], dtype=torch.long, device=uniq.device)
        row[uniq] = torch.arange(len(uniq), device=uniq.device)  # item -> row of the assignment
    history_onehot = target_onehot = None
    if schedule.soft_codes:
        # Ours (DIGER's reference feeds the recommender the per-epoch table's hard codes): the recommender embeds
        # the history and decoder-input tokens from the assignment's one-hots (DIGER: Gumbel noise in training).
        # Labels and hard ids stay the deterministic table's; noisy_labels (the ablation) writes the noisy codes
        # into the table, so they become the cross-entropy labels too.
        if schedule.noisy_labels:
            item_sids = item_sids.clone()
            item_sids[uniq, : a.codes.shape[1]] = a.codes  # dedup token from the table
        history_onehot = a.onehot[row[history[local].clamp(min=0)]]  # (b, H, L, K), padding rows ignored
        target_onehot = a.onehot[row[target[local]]]  # (b, L, K)
    ids, mask = model_inputs(model, item_sids, history[local], users[local])
    target_sids = item_sids[target]  # (B, Lc)
    enc, dec = model.hidden_states(ids, mask, target_sids[local], history_onehot, target_onehot)
    # The recommender's per-row outputs the losses read, in one (b, sum of widths) block gathered to (B, ...).
    outs = model.all_level_logits(dec)  # [(b, K_l)] per level, fp32
    latent = sia is not None or (soda is not None and soda.user_source == "latent")
    if latent:
        outs.append(model.sequence_latent(enc, mask).float())  # (b, latent_dim) z_E
    if psa is not None:
        outs.append(model.preference(dec).float())  # (b, recon_dim) h_D
    widths = [o.shape[1] for o in outs]
    outs = list(dist.gather_shards(torch.cat(outs, 1), len(target)).split(widths, 1))
    logits = outs[: model.num_levels]  # [(B, K_l)] per level
    out = {"rec": model.rec_loss(logits, target_sids)}
    # A training tokenizer may reshape the task loss (DIGER's SDUD ties its noise scale to it); logged raw.
    total = tokenizer.wrap_task_loss(out["rec"]) if tokenizer.training else out["rec"]
    if a is not None and tokenizer.training:  # a frozen tokenizer's own loss is a constant here
        out["sq"] = a.loss
        out.update({f"tok.{name}": term for name, term in a.terms.items()})
        total = total + a.loss
    if soda is not None and soda.user_source == "latent":
        with torch.autocast(item_emb.device.type, enabled=False):
            latent_logits = tokenizer.quantizer.logits(outs[model.num_levels])  # (B, L, K)
    if sia is not None:
        # ETEGRec's code: scores +distance, residuals straight-through (no gradient past level 0); the paper's
        # -distance has the same minimum (KL 0 iff the scores agree up to a constant) and weighs the near codes
        # instead of the far ones (measured: benchmarks/sia_probe.py, docs/results.md "Fidelity")
        with torch.autocast(item_emb.device.type, enabled=False):
            user_scores = tokenizer.quantizer.straight_through_distances(outs[model.num_levels])  # (B, L, K)
            item_scores = tokenizer.quantizer.straight_through_distances(a.latent[row[target]])
        out["sia"] = sia_loss(user_scores, item_scores, target)
        total = total + sia.weight * out["sia"]
    if psa is not None:
        out["psa"] = psa_loss(outs[-1], a.reconstruction[row[target]], target, psa.tau)
        total = total + psa.weight * out["psa"]
    if soda is not None:
        if soda.user_source == "recommender":
            user = torch.stack(logits[: a.logits.shape[1]], dim=1)  # (B, L, K) teacher-forced, learned levels
        else:
            user = latent_logits
        if soda.soft_residuals:
            with torch.autocast(a.latent.device.type, enabled=False):
                items = tokenizer.quantizer.soft_logits(a.latent[row[candidates]], soda.tau)
        else:
            items = a.logits[row[candidates]]  # (M, L, K)
        if soda.normalize:
            user, items = level_normalized(user, soda.tau), level_normalized(items, soda.tau)
        else:  # the scale before issue 22: raw recommender logits, minus squared distances / tau
            user = user if soda.user_source == "recommender" else user / soda.tau
            items = items / soda.tau
        out["soda"] = soda_loss(user, items, candidates, target, negative, soda.direction)
        total = total + soda.weight * out["soda"]
    out["total"] = total
    return out


class JointStep(TrainStep):
    """Recommender and tokenizer under a schedule: its checkpoint holds both and the current SID table
    (``JointState``); each epoch's phase chooses which side trains, and the codes are recomputed after every epoch
    that trained the tokenizer."""

    loss_is_global = True  # every process computes the whole batch's losses (joint_losses)
    step_record = ("phase",)

    def __init__(self, model: Tiger, tokenizer: Tokenizer, item_emb: Tensor, split: LeaveOneOut, cfg: TrainConfig,
                 schedule: ScheduleConfig, seed: int, progress: bool):
        if not hasattr(tokenizer, "assign"):
            raise ValueError(f"schedule: tokenizer {tokenizer.name!r} has no assign(); use rqvae, letter or diger")
        layers = sum(isinstance(m, nn.Linear) for m in getattr(tokenizer, "encoder", nn.Module()).modules())
        if schedule.frozen_tokenizer_layers > layers:
            raise ValueError(f"schedule.frozen_tokenizer_layers: {schedule.frozen_tokenizer_layers}, but tokenizer "
                             f"{tokenizer.name!r} has {layers} encoder layers")
        self.device = item_emb.device
        model.to(self.device)
        tokenizer.to(self.device)
        self.model, self.tokenizer, self.item_emb = model, tokenizer, item_emb
        self.cfg, self.schedule, self.seed, self.progress = cfg, schedule, seed, progress
        self.data = training_data(split, cfg, seed, self.device)
        self.users = split.train.user
        self.lengths = torch.as_tensor((split.train.history >= 0).sum(1))  # (S,) items per training history
        self.module = JointState(model, tokenizer, semantic_ids_for(tokenizer, item_emb, model))
        self.optimizer = adamw([
            {"params": list(model.parameters()), "lr": cfg.lr, "weight_decay": cfg.weight_decay},
            # the tokenizer's own groups (DIGER's SDUD sigmas have their own rate)
            *({"weight_decay": 0.0, **group} for group in tokenizer.param_groups(schedule.tokenizer_lr)),
        ], lr=cfg.lr, weight_decay=cfg.weight_decay)

    def after_resume(self) -> None:
        # Every process built or resumed the same state; rank 0's copy makes sure (as DDP does when it wraps a model).
        dist.broadcast_from_main(list(self.module.state_dict().values()))
        self.trie = SidTrie(self.module.item_sids, self.model.cfg.level_sizes).to(self.device)

    def start_epoch(self, epoch: int) -> dict[str, Any]:
        self.phase = self.schedule.phase(epoch, self.cfg.epochs)
        self.aligned = epoch >= self.schedule.warmup_epochs
        set_phase(self.model, self.tokenizer, self.phase, self.schedule)
        if self.phase != "recommender":  # per-epoch state of the tokenizer's loss (LETTER's codeword groups)
            self.tokenizer.begin_epoch(torch.Generator().manual_seed(self.seed * 100_019 + epoch))
        return {"phase": self.phase, "aligned": self.aligned}

    def clipped(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    def losses(self, idx: Tensor, step: int) -> dict[str, Tensor]:
        # Data-parallel: this process runs the recommender on its shard of the global batch and gets the whole
        # batch's loss (see joint_losses), with the batch's random draws seeded by the step so that all processes
        # (and a single-process run) draw the same. Then one all-reduce averages the gradients (sync_gradients).
        # Why not DDP: it syncs the parameters that required a gradient when it wrapped the module, but each phase
        # freezes another side (a wrapper per phase, or find_unused_parameters, would be needed), and a step is not
        # one module's forward (recommender on a shard, tokenizer on the whole batch, losses on rows gathered from
        # every process). A manual all-reduce after backward is exact whatever trains, and a parameter no process
        # gave a gradient keeps grad None, so AdamW leaves it alone as in one process.
        d = self.data
        return joint_losses(self.model, self.tokenizer, self.item_emb, self.module.item_sids, d.history[idx],
                            d.user[idx], d.target[idx], self.schedule, self.aligned, rows=dist.shard(len(idx)),
                            draw_seed=self.seed * 1_000_003 + step)

    def sync_gradients(self, params: list[nn.Parameter]) -> None:
        dist.average_gradients(params)

    def end_epoch(self, epoch: int, rec: dict[str, Any]) -> None:
        if self.phase == "recommender":
            return
        # The tokenizer moved: recompute every item's codes (METHODS 3, 6). Every process computed the same table
        # from the same weights; rank 0's guards against a GPU kernel breaking a near-tie differently, which would
        # give the processes different tries.
        item_sids = self.module.item_sids
        item_sids.copy_(semantic_ids_for(self.tokenizer, self.item_emb, self.model))
        dist.broadcast_from_main([item_sids])
        self.trie = SidTrie(item_sids, self.model.cfg.level_sizes).to(self.device)
        health = codebook_health(item_sids[:, :-1], self.tokenizer.codebook_size)
        rec.update({"usage": health["usage"], "collision_rate": health["collision_rate"]})
        rec.update(self.tokenizer.joint_stats())

    def validate(self) -> dict[str, float]:
        c = self.cfg
        return evaluate(self.model, self.data.valid, self.module.item_sids, self.trie, beam_size=c.eval_beam_size,
                        ks=[10], batch_size=c.eval_batch_size, progress=self.progress, desc="validate", bf16=c.bf16)

    def write_best(self, folder: Path, epoch: int, metrics: dict[str, float]) -> None:
        write_joint_best(folder, self.model, epoch, metrics, self.tokenizer, self.module.item_sids)

    def counts_for_patience(self, epoch: int) -> bool:
        return self.schedule.tokenizer_frozen_from(epoch, self.cfg.epochs)

    def finish(self) -> None:
        set_phase(self.model, self.tokenizer, "joint")  # hand both back trainable


def train_joint(
    model: Tiger,
    tokenizer: Tokenizer,
    item_emb: Tensor,
    split: LeaveOneOut,
    cfg: TrainConfig,
    schedule: ScheduleConfig,
    out_dir: str | Path,
    seed: int,
    resume: bool = True,
    progress: bool = True,
    log: Callable[[dict[str, Any]], None] | None = None,
    deadline: float | None = None,
    tensorboard_dir: str | Path | None = None,
) -> TrainResult:
    """Train ``model`` and ``tokenizer`` with ``schedule``; keep the best validation epoch of both in ``best/``.

    Args:
        model: the recommender; its last level (dedup) must be large enough for every SID table the tokenizer
            produces (see ``semantic_ids_for``).
        tokenizer: a fitted tokenizer with ``assign`` (pre-trained by the tokenize stage).
        item_emb: (N, D) item embeddings on the training device.
        split, cfg, out_dir, seed, resume, progress, log, deadline: as in ``train_recommender``; ``log`` receives
            one record per epoch with ``phase``, the mean of every loss term and, after a tokenizer update, the
            codebook health of the new codes.

    Returns:
        ``TrainResult``; the best weights are ``out_dir/best/model.safetensors`` and ``out_dir/best/tokenizer/``.

    Example:
        >>> res = train_joint(model, tok, emb, split, TrainConfig(epochs=4), ScheduleConfig(name="alternating"),
        ...                   "runs/x/recommender", seed=0)  # doctest: +SKIP
    """
    step = JointStep(model, tokenizer, item_emb, split, cfg, schedule, seed, progress)
    return train_epochs(step, LoopConfig.of(cfg), TrainingDir(out_dir), seed, resume=resume, progress=progress,
                        log=log, deadline=deadline, tensorboard_dir=tensorboard_dir)
