"""The generative recommenders by name, and one loader for any of them."""

from __future__ import annotations

from pathlib import Path

import torch

from sidrec.models.etegrec import ETEGRec, ETEGRecConfig
from sidrec.models.io import load_module
from sidrec.models.tiger import Tiger, TigerConfig
from sidrec.utils import read_json

RECOMMENDERS: dict[str, tuple[type[Tiger], type[TigerConfig]]] = {
    "tiger": (Tiger, TigerConfig),
    "etegrec": (ETEGRec, ETEGRecConfig),
}


def load_recommender(directory: str | Path, device: str | torch.device = "cpu") -> Tiger:
    """Load a model saved by ``sidrec.models.tiger.save_model``: ETEGRec when its config has ``recon_dim``.

    Example:
        >>> model = load_recommender("runs/beauty/model")  # doctest: +SKIP
    """
    raw = read_json(Path(directory) / "model.json")
    name = "etegrec" if isinstance(raw, dict) and "recon_dim" in raw else "tiger"
    model_cls, config_cls = RECOMMENDERS[name]
    return load_module(model_cls, config_cls, directory, required=("level_sizes",), device=device)
