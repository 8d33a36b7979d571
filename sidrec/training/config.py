"""The settings of recommender training (``TrainConfig``) and of the schedule that trains tokenizer and recommender
together (``ScheduleConfig``): sections ``train`` and ``schedule`` of a run config (``sidrec.config``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sidrec.training.losses import LossesConfig


@dataclass
class TrainConfig:
    """Recommender training: AdamW + warm-up/cosine, early stopping on validation NDCG@10."""

    epochs: int = 200
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.035
    warmup_steps: int = 1000
    scheduler: str = "cosine"  # cosine | constant | inverse_sqrt
    grad_clip: float = 1.0
    patience: int = 10  # evaluations without improvement before stopping
    eval_every: int = 1  # epochs
    eval_batch_size: int = 512
    eval_beam_size: int = 20  # beam used for validation during training
    valid_users: int = 0  # 0 = all users; else a fixed seeded subset for faster validation
    device: str = "auto"
    bf16: bool = True  # bf16 autocast (fp32 weights) where it is fast: CUDA, or a CPU with AMX or AVX512-BF16 (run.json: cpu_bf16)
    length_buckets: bool = True  # batches of similar history length, each trimmed to its longest (same losses)
    max_steps: int = 0  # 0 = no cap (a cap for quick smoke runs)
    prefixes_per_user: int = 0  # 0 = every training prefix each epoch (METHODS 1.3); k > 0 = k random per user
    log_every: int = 50  # a "step" record in recommender/metrics.jsonl every this many steps (0 = epochs only)
    tensorboard: bool = False  # also write TensorBoard event files to <run_dir>/tensorboard (needs tensorboard)
    compile: bool = False  # torch.compile the training step's model (GPU speed lever; same results)


SCHEDULES = ("two_stage", "alternating", "joint")


@dataclass
class ScheduleConfig:
    """How tokenizer and recommender are trained together (``RunConfig.schedule``).

    Args:
        name: ``"two_stage"``, ``"alternating"`` or ``"joint"``.
        cycle_epochs: C, epochs per alternation cycle (1 tokenizer epoch + C - 1 recommender epochs); C >= 2.
        tokenizer_lr: AdamW learning rate of the tokenizer's parameters (ETEGRec: 5e-5 .. 5e-4).
        warmup_epochs: first epochs without the alignment losses (ETEGRec: 10). Default 2 (ours): with cycles of 2
            epochs the first aligned tokenizer phase (epoch 2) meets a recommender trained for an epoch, not an
            untrained one, whose code distributions SODA's score would align the tokenizer to (issue 22).
        finetune_epochs: last epochs with the tokenizer frozen (recommender fine-tuning).
        soft_codes: the recommender embeds SID tokens from the tokenizer's ``onehot`` so that L_REC reaches the
            tokenizer (needs a straight-through tokenizer such as DIGER to have any effect).
        noisy_labels: with ``soft_codes``, the tokenizer's training-mode codes (DIGER: Gumbel-sampled) also become
            the cross-entropy labels and hard input ids (ours, the ablation). Default False, DIGER's reference:
            labels and ids from the deterministic per-epoch SID table, the noise only on the soft input path.
        frozen_tokenizer_layers: the bottom linear layers of the tokenizer's encoder kept frozen while it trains;
            -1 = the whole encoder, 0 = none. DIGER's reference (``freeze_id_encoder``): the whole encoder with
            FrqUD (only the codebooks train), the bottom 3 of its 4 layers with SDUD.
        dedup_capacity: size of the recommender's last (dedup) level when the tokenizer trains: the largest group
            of items sharing one code tuple that later codes may form. 0 = max(2 x the pre-trained tokenizer's
            largest group, K) (our choice).
        losses: extra losses (``soda``, ``sia``, ``psa``), off when absent.

    Example:
        >>> from sidrec.training.losses import SODAConfig
        >>> ScheduleConfig(name="alternating", cycle_epochs=2, losses=LossesConfig(soda=SODAConfig())).name
        'alternating'
    """

    name: str = "two_stage"
    cycle_epochs: int = 2
    tokenizer_lr: float = 1e-4
    warmup_epochs: int = 2
    finetune_epochs: int = 0
    soft_codes: bool = False
    noisy_labels: bool = False
    frozen_tokenizer_layers: int = 0
    dedup_capacity: int = 0
    losses: LossesConfig = field(default_factory=LossesConfig)

    def __post_init__(self) -> None:
        checks = [
            ("name", self.name in SCHEDULES, f"must be one of {SCHEDULES}, got {self.name!r}"),
            ("cycle_epochs", self.cycle_epochs >= 2, f"must be >= 2, got {self.cycle_epochs}"),
            ("tokenizer_lr", self.tokenizer_lr > 0, f"must be > 0, got {self.tokenizer_lr}"),
            ("warmup_epochs", self.warmup_epochs >= 0, f"must be >= 0, got {self.warmup_epochs}"),
            ("finetune_epochs", self.finetune_epochs >= 0, f"must be >= 0, got {self.finetune_epochs}"),
            ("dedup_capacity", self.dedup_capacity >= 0, f"must be >= 0, got {self.dedup_capacity}"),
            ("soft_codes", not (self.soft_codes and self.name == "two_stage"),
             "needs a schedule that trains the tokenizer (alternating or joint)"),
            ("noisy_labels", self.soft_codes or not self.noisy_labels, "needs soft_codes: true"),
            ("frozen_tokenizer_layers", self.frozen_tokenizer_layers >= -1,
             f"must be >= -1 (-1 = the whole encoder), got {self.frozen_tokenizer_layers}"),
        ]
        for key, ok, message in checks:
            if not ok:
                raise ValueError(f"schedule.{key}: {message}")

    @property
    def trains_tokenizer(self) -> bool:
        return self.name != "two_stage"

    @property
    def plain(self) -> bool:
        """Two-stage without extra losses: today's ``train_recommender`` path."""
        return self.name == "two_stage" and not self.losses.active

    def phase(self, epoch: int, total_epochs: int) -> str:
        """``"tokenizer"``, ``"recommender"`` or ``"joint"``: which side trains in ``epoch`` (0-based).

        Example:
            >>> [ScheduleConfig(name="alternating", cycle_epochs=2, finetune_epochs=1).phase(e, 5) for e in range(5)]
            ['tokenizer', 'recommender', 'tokenizer', 'recommender', 'recommender']
        """
        if self.name == "two_stage" or epoch >= total_epochs - self.finetune_epochs:
            return "recommender"
        if self.name == "joint":
            return "joint"
        return "tokenizer" if epoch % self.cycle_epochs == 0 else "recommender"

    def tokenizer_frozen_from(self, epoch: int, total_epochs: int) -> bool:
        """Whether the tokenizer stays frozen from ``epoch`` on (early stopping may only trigger then)."""
        return self.name == "two_stage" or epoch >= total_epochs - self.finetune_epochs
