"""Typed run configuration: dataclasses loaded from YAML, overridable with ``key.sub=value``, strict on keys.

One ``RunConfig`` describes a whole run (data -> embeddings -> tokenizer -> recommender -> evaluation). It is saved
as ``config.yaml`` next to every checkpoint. Unknown keys and wrong types are errors naming the offending key.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sidrec.data.embeddings import EmbedConfig
from sidrec.models.sasrec import SASRecConfig
from sidrec.training.losses import LossesConfig
from sidrec.training.sasrec import SASRecTrainConfig


class ConfigError(ValueError):
    """A configuration problem; the message names the key."""


class _StrictSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also refuses duplicate keys (plain YAML silently keeps the last one) and aliases
    (``*name``: a few nested aliases expand to billions of values once the config is hashed or dumped)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in configs", mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep)


def _parse_yaml(text: str, where: str) -> Any:
    """Parse YAML strictly; errors name ``where`` and the line."""
    try:
        return yaml.load(text, Loader=_StrictSafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{where}{line}: invalid YAML: {e.problem or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: invalid YAML: {e}") from None


@dataclass
class DataConfig:
    """Where the interactions come from. ``path`` is relative to ``$SIDREC_DATA`` unless absolute."""

    name: str = "ml-100k"
    format: str = "movielens_pypi"  # s3rec | lcrec | recbole | amazon2014 | amazon2023 | movielens_pypi
    path: str | None = None
    max_history: int = 20
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TokenizerConfig:
    """Which tokenizer (a key of ``sidrec.tokenizers.TOKENIZERS``) and its own parameters.

    ``collab`` optionally builds collaborative item embeddings (same options as ``embed``) passed to the
    tokenizer's ``fit`` as ``collab``, e.g. ``{sources: [sasrec], sasrec_dim: 32}`` for LETTER's L_CF.
    """

    name: str = "rqvae"
    params: dict[str, Any] = field(default_factory=dict)
    collab: EmbedConfig | None = None


@dataclass
class ModelConfig:
    """The recommender: ``name`` (``tiger`` or ``etegrec``) and its T5 sizes (TIGER's defaults, METHODS 1.3).

    The SID level sizes come from the tokenizer; ETEGRec's head sizes from the tokenizer and the embeddings.
    """

    name: str = "tiger"
    d_model: int = 128
    num_heads: int = 6
    d_kv: int = 64
    d_ff: int = 1024
    num_encoder_layers: int = 4
    num_decoder_layers: int = 4
    dropout: float = 0.1
    user_buckets: int = 2000
    logit_temperature: float = 1.0


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
    bf16: bool = True  # bf16 autocast (fp32 weights) where it is fast: CUDA, or a CPU with AMX (run.json: cpu_amx_bf16)
    length_buckets: bool = True  # batches of similar history length, each trimmed to its longest (same losses)
    max_steps: int = 0  # 0 = no cap (a cap for quick smoke runs)
    prefixes_per_user: int = 0  # 0 = every training prefix each epoch (METHODS 1.3); k > 0 = k random per user
    log_every: int = 50  # a "step" record in recommender/metrics.jsonl every this many steps (0 = epochs only)
    tensorboard: bool = False  # also write TensorBoard event files to <run_dir>/tensorboard (needs tensorboard)
    compile: bool = False  # torch.compile the training step's model (GPU speed lever; same results)


@dataclass
class BaselineConfig:
    """The SASRec baseline (METHODS 7) trained by ``sidrec baseline``: model sizes, then its own training."""

    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 2
    max_len: int = 50
    dropout: float = 0.2
    loss: str = "ce"  # ce | bce
    train: SASRecTrainConfig = field(default_factory=SASRecTrainConfig)

    def model_config(self, num_items: int) -> SASRecConfig:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "train"}
        return SASRecConfig(num_items=num_items, **fields)


@dataclass
class EvalConfig:
    beam_size: int = 20
    ks: list[int] = field(default_factory=lambda: [5, 10, 20])
    batch_size: int = 512
    bf16: bool = True  # decode under bf16 autocast where it is fast (CUDA, or a CPU with AMX)


SCHEDULES = ("two_stage", "alternating", "joint")


@dataclass
class ScheduleConfig:
    """How tokenizer and recommender are trained together (``RunConfig.schedule``).

    Args:
        name: ``"two_stage"``, ``"alternating"`` or ``"joint"``.
        cycle_epochs: C, epochs per alternation cycle (1 tokenizer epoch + C - 1 recommender epochs); C >= 2.
        tokenizer_lr: AdamW learning rate of the tokenizer's parameters (ETEGRec: 5e-5 .. 5e-4).
        warmup_epochs: first epochs without the alignment losses (ETEGRec: 10).
        finetune_epochs: last epochs with the tokenizer frozen (recommender fine-tuning).
        soft_codes: the recommender embeds SID tokens from the tokenizer's ``onehot`` so that L_REC reaches the
            tokenizer (needs a straight-through tokenizer such as DIGER to have any effect).
        noisy_labels: with ``soft_codes``, the tokenizer's training-mode codes (DIGER: Gumbel-sampled) also become
            the cross-entropy labels and hard input ids (ours, the ablation). Default False, DIGER's reference:
            labels and ids from the deterministic per-epoch SID table, the noise only on the soft input path.
        frozen_encoder_layers: the recommender's bottom encoder layers kept frozen in every phase (DIGER's
            reference: all layers with FrqUD, the bottom 3 with SDUD, of a recommender pre-trained before; sidrec
            starts the recommender from scratch, so freezing is for a warm start only); 0 = none.
        freeze_decoder: keep the recommender's decoder layers frozen in every phase (DIGER's reference).
        dedup_capacity: size of the recommender's last (dedup) level when the tokenizer trains: the largest group
            of items sharing one code tuple that later codes may form. 0 = max(2 x the pre-trained tokenizer's
            largest group, K) (our choice).
        losses: extra losses (``soda``, ``sia``, ``psa``), off when absent.

    Example:
        >>> ScheduleConfig(name="alternating", cycle_epochs=2, losses=LossesConfig(soda=SODAConfig()))
    """

    name: str = "two_stage"
    cycle_epochs: int = 2
    tokenizer_lr: float = 1e-4
    warmup_epochs: int = 0
    finetune_epochs: int = 0
    soft_codes: bool = False
    noisy_labels: bool = False
    frozen_encoder_layers: int = 0
    freeze_decoder: bool = False
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
            ("frozen_encoder_layers", self.frozen_encoder_layers >= 0,
             f"must be >= 0, got {self.frozen_encoder_layers}"),
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


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sasrec: BaselineConfig = field(default_factory=BaselineConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    seed: int = 42
    run_dir: str = "runs/default"
    cache_dir: str = ".sidrec/cache"

    def validate(self) -> RunConfig:
        """Reject impossible values before any work starts (``check_dataset`` adds the dataset-size checks)."""
        from sidrec.data.embeddings import _check_config as check_embed
        from sidrec.data.loaders import LOADERS
        from sidrec.tokenizers import TOKENIZERS
        from sidrec.tokenizers.base import config_from_params
        from sidrec.tokenizers.index import IMPORTED, ImportedConfig

        t, m = self.train, self.model
        positive = {"data.max_history": self.data.max_history, "train.epochs": t.epochs,
                    "train.batch_size": t.batch_size, "train.patience": t.patience,
                    "train.eval_every": t.eval_every,
                    "train.eval_batch_size": t.eval_batch_size, "train.eval_beam_size": t.eval_beam_size,
                    "eval.beam_size": self.eval.beam_size, "eval.batch_size": self.eval.batch_size,
                    "model.d_model": m.d_model, "model.num_heads": m.num_heads, "model.d_kv": m.d_kv,
                    "model.d_ff": m.d_ff, "model.num_encoder_layers": m.num_encoder_layers,
                    "model.num_decoder_layers": m.num_decoder_layers}
        non_negative = {"train.prefixes_per_user": t.prefixes_per_user, "train.valid_users": t.valid_users,
                        "train.max_steps": t.max_steps, "train.log_every": t.log_every, "train.warmup_steps": t.warmup_steps,
                        "train.weight_decay": t.weight_decay, "train.grad_clip": t.grad_clip,
                        "model.user_buckets": m.user_buckets}
        checks = [(k, v >= 1, "must be >= 1") for k, v in positive.items()]
        checks += [(k, v >= 0, "must be >= 0") for k, v in non_negative.items()]
        checks += [
            ("train.lr", t.lr > 0, "must be > 0"),
            ("model.logit_temperature", m.logit_temperature > 0, "must be > 0"),
            ("train.scheduler", t.scheduler in ("cosine", "constant", "inverse_sqrt"),
             "must be cosine, constant or inverse_sqrt"),
            ("data.format", self.data.format in (*LOADERS, "movielens_pypi"),
             f"must be one of {', '.join((*LOADERS, 'movielens_pypi'))}"),
            ("eval.ks", bool(self.eval.ks) and all(k >= 1 for k in self.eval.ks), "must be positive integers"),
            ("eval.ks", max(self.eval.ks or [1]) <= self.eval.beam_size, "largest K must be <= eval.beam_size"),
            ("model.name", m.name in ("tiger", "etegrec"), "must be tiger or etegrec"),
            ("schedule.losses.psa", self.schedule.losses.psa is None or m.name == "etegrec",
             "needs model.name etegrec (its preference head)"),
            ("model.dropout", 0.0 <= m.dropout < 1.0, "must be in [0, 1)"),
        ]
        for key, ok, msg in checks:
            if not ok:
                raise ConfigError(f"{key}: {msg}")
        # data.options are the loader's keyword arguments: as strict as every other section.
        loader = LOADERS["recbole" if self.data.format == "movielens_pypi" else self.data.format]
        valid = [name for name in inspect.signature(loader).parameters if name != "path"]
        unknown = sorted(set(self.data.options) - set(valid))
        if unknown:
            raise ConfigError(f"unknown config key data.options.{unknown[0]} for data.format {self.data.format} "
                              f"(valid: {', '.join(valid)})")
        # ``imported`` reads SIDs from another tool's file instead of fitting (sidrec.tokenizers.index).
        tokenizer_configs = {name: config_cls for name, (_, config_cls) in TOKENIZERS.items()}
        tokenizer_configs[IMPORTED] = ImportedConfig
        if self.tokenizer.name not in tokenizer_configs:
            raise ConfigError(f"tokenizer.name: unknown tokenizer {self.tokenizer.name!r} "
                              f"(known: {', '.join(tokenizer_configs)})")
        tok_cfg = None
        for what, check in (("tokenizer", lambda: config_from_params(tokenizer_configs[self.tokenizer.name],
                                                                      self.tokenizer.params, "tokenizer.params")),
                            ("embed", lambda: check_embed(self.embed)),
                            ("sasrec", lambda: self.sasrec.model_config(num_items=2))):
            try:
                out = check()
            except ValueError as e:
                raise ConfigError(str(e) if str(e).startswith(what) else f"{what}: {e}") from None
            tok_cfg = out if what == "tokenizer" else tok_cfg
        # The weights of the alignment losses (ETEGRec's mu / lambda, SODA's gamma) are set against a tokenizer loss
        # of F.mse_loss means, as in the authors' code; a summed one (over D inputs, d latents) is D or d times
        # larger and leaves them inert in the tokenizer phases (issue 14), so that pairing is refused.
        if (self.schedule.trains_tokenizer and self.schedule.losses.active
                and getattr(tok_cfg, "reduction", "mean") == "sum"):
            raise ConfigError("tokenizer.params.reduction: 'sum' while the schedule trains the tokenizer with "
                              "schedule.losses; their weights assume the authors' mean reductions: set "
                              "tokenizer.params.reduction: mean")
        return self

    def check_dataset(self, num_items: int, name: str) -> None:
        """The checks that need the dataset: beams and top-K cannot exceed the catalogue of ``num_items``.

        Called right after the data is prepared, before any embedding, tokenizing or training.

        Example:
            >>> RunConfig().check_dataset(num_items=12, name="toy")  # doctest: +SKIP
            ConfigError: eval.beam_size: 20 is larger than the catalogue (12 items of dataset 'toy')
        """
        sizes = (("eval.beam_size", self.eval.beam_size), ("train.eval_beam_size", self.train.eval_beam_size),
                 ("eval.ks", max(self.eval.ks)))
        for key, value in sizes:
            if value > num_items:
                raise ConfigError(f"{key}: {value} is larger than the catalogue ({num_items} items of dataset "
                                  f"{name!r})")


def input_path(value: str, key: str | None = None) -> Path:
    """An input path of a config (``data.path``, ``tokenizer.params.path``, ``embed.npy_path``,
    ``embed.model_path``): absolute, or relative to ``$SIDREC_DATA`` (``data_root``), all the same way.

    With ``key``, a path that does not exist is a ``FileNotFoundError`` naming the key, the path looked for and,
    for a relative path, what it was resolved against.

    Example:
        >>> input_path("amazon-beauty")  # doctest: +SKIP
        PosixPath('/work/shared/data/amazon-beauty')
    """
    from sidrec.data.loaders import data_root

    path = Path(value).expanduser()
    resolved = path if path.is_absolute() else data_root() / path
    if key is not None and not resolved.exists():
        base = "" if path.is_absolute() else (
            f" ({value!r} is relative, so it is resolved against $SIDREC_DATA = {data_root()}; give an absolute "
            "path for a file elsewhere)")
        raise FileNotFoundError(f"{key}: {resolved}: not found{base}")
    return resolved


def resolve_embed(cfg: EmbedConfig, key: str) -> EmbedConfig:
    """``cfg`` with the input paths its sources use resolved by ``input_path`` (errors name ``key.npy_path`` ...)."""
    npy, model = cfg.npy_path, cfg.model_path
    if npy is not None and "npy" in cfg.sources:
        npy = str(input_path(npy, f"{key}.npy_path"))
    if model is not None and "text" in cfg.sources:
        model = str(input_path(model, f"{key}.model_path"))
    return dataclasses.replace(cfg, npy_path=npy, model_path=model)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; build nested dataclasses. Errors name ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: expected {tp}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        return value
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ``ConfigError``.

    Example:
        >>> from_dict(DataConfig, {"name": "beauty", "max_history": 20}).max_history
        20
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]!s} (valid: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as e:  # value checks of a section's own __post_init__ name their full key
        raise ConfigError(str(e)) from None


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested dict, in place."""
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r}: expected key=value")
        key, raw = ov.split("=", 1)
        value = _parse_yaml(raw, f"override {key}") if raw != "" else ""
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {p} is not a section")
        node[parts[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML preset (or the defaults), apply overrides, validate.

    Example:
        >>> load_config(None, ["train.epochs=3", "data.name=beauty"]).train.epochs
        3
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"{p}: config file not found")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        data = _parse_yaml(text, str(p)) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
    apply_overrides(data, overrides or [])
    return from_dict(RunConfig, data).validate()


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
