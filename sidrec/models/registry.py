"""The generative recommenders by name (``RECOMMENDERS``), and one loader for any of them.

Adding a recommender is one entry here plus its module: a config dataclass (its defaults are what
``model: {name: ..., params: {...}}`` starts from) and a model class with TIGER's interface.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sidrec.models.etegrec import ETEGRec, ETEGRecConfig
from sidrec.models.io import load_module
from sidrec.models.tiger import Tiger, TigerConfig
from sidrec.utils import read_json

# Config fields that the run sets from its data and tokenizer, never from model.params.
DERIVED = ("level_sizes", "max_history", "latent_dim", "recon_dim")


@dataclass(frozen=True)
class RecommenderSpec:
    """A registered recommender.

    Attributes:
        model: the model class, built as ``model(config)``.
        config: its config dataclass (``TigerConfig`` or a subclass).
        label: the name in results tables, e.g. ``"TIGER"``.
        latent: it always needs the tokenizer's latent space (ETEGRec's heads); TIGER needs it only for the
            latent alignment losses.
    """

    model: type[Tiger]
    config: type[TigerConfig]
    label: str
    latent: bool = False

    @property
    def fields(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.config)]

    @property
    def params(self) -> list[str]:
        """The fields ``model.params`` may set."""
        return [name for name in self.fields if name not in DERIVED]


RECOMMENDERS: dict[str, RecommenderSpec] = {
    "tiger": RecommenderSpec(Tiger, TigerConfig, "TIGER"),
    "etegrec": RecommenderSpec(ETEGRec, ETEGRecConfig, "ETEGRec", latent=True),
}


def recommender_spec(name: str) -> RecommenderSpec:
    if name not in RECOMMENDERS:
        raise ValueError(f"model.name: unknown recommender {name!r} (known: {', '.join(RECOMMENDERS)})")
    return RECOMMENDERS[name]


def load_recommender(directory: str | Path, device: str | torch.device = "cpu") -> Any:
    """Load a model saved by ``sidrec.models.tiger.save_model``: the registered recommender with the fewest config
    fields that ``model.json`` fits (ETEGRec's config adds ``recon_dim`` to TIGER's).

    Example:
        >>> model = load_recommender("runs/beauty/model")  # doctest: +SKIP
    """
    raw = read_json(Path(directory) / "model.json")
    keys = set(raw) if isinstance(raw, dict) else set()
    fitting = [spec for spec in RECOMMENDERS.values() if keys <= set(spec.fields)] or [RECOMMENDERS["tiger"]]
    spec = min(fitting, key=lambda s: len(s.fields))  # load_module names any problem with the file
    return load_module(spec.model, spec.config, directory, required=("level_sizes",), device=device)
