"""Save and load a model as ``model.safetensors`` + ``model.json`` (its config dataclass); never pickle."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sidrec.utils import atomic_write, atomic_write_json, read_json


def save_module(model: torch.nn.Module, directory: str | Path) -> None:
    """Atomically write the weights and ``model.cfg`` (a dataclass) into ``directory``."""
    directory = Path(directory)
    state = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    atomic_write(directory / "model.safetensors", lambda p: save_file(state, str(p)))
    atomic_write_json(directory / "model.json", dataclasses.asdict(model.cfg))


def load_module(model_cls: type, config_cls: type, directory: str | Path, required: tuple[str, ...],
                device: str | torch.device = "cpu") -> Any:
    """Rebuild ``model_cls(config_cls(**model.json))`` and load its weights, strictly.

    Unknown or missing config keys, a missing weights file, and missing, extra or mis-shaped tensors raise errors
    naming the file.
    """
    directory = Path(directory)
    config_path, weights_path = directory / "model.json", directory / "model.safetensors"
    name = config_cls.__name__
    raw = read_json(config_path)
    if not isinstance(raw, dict):
        raise ValueError(f"{config_path}: expected a JSON object with {name} fields")
    unknown = sorted(set(raw) - {f.name for f in dataclasses.fields(config_cls)})
    if unknown:
        raise ValueError(f"{config_path}: unknown {name} keys {unknown}")
    for key in required:
        if key not in raw:
            raise ValueError(f"{config_path}: missing required key {key!r}")
    try:
        cfg = config_cls(**raw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{config_path}: {e}") from None
    if not weights_path.exists():
        raise FileNotFoundError(f"{weights_path}: file not found")
    with torch.random.fork_rng(devices=[]):  # the throwaway initialisation must not move the global RNG
        model = model_cls(cfg)
    state = load_file(str(weights_path))
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{weights_path}: missing tensors {missing}, unexpected tensors {unexpected}")
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise ValueError(f"{weights_path}: tensor {key} has shape {tuple(tensor.shape)}, "
                             f"config expects {tuple(expected[key].shape)}")
    model.load_state_dict(state)
    return model.to(device)
