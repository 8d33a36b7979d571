"""Atomic, checksummed training checkpoints (safetensors + JSON, never pickle).

A checkpoint is a folder ``ckpt-<step>/`` holding ``model.safetensors``, ``optim.safetensors`` and
``state.json`` (counters, RNG states, optimiser hyper-parameters and the sha256 of each tensor file). The file
``LATEST`` names the newest complete checkpoint and is replaced atomically only after that folder is fully
written, so a crash at any moment leaves the previous checkpoint usable. Loading verifies the checksums.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sidrec.utils import atomic_write, atomic_write_json, atomic_write_text, read_json, sha256_file


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated or does not match its recorded checksum."""


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser state dict into flat tensors (for safetensors) and JSON-able scalars."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{name}"] = v.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(pid), {})[name] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    for pid, st in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(st)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    directory: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write ``directory/ckpt-<step>`` and point ``LATEST`` at it; keep the ``keep`` newest."""
    root = Path(directory)
    ckpt = root / f"ckpt-{step:09d}"
    if ckpt.exists():
        shutil.rmtree(ckpt)
    ckpt.mkdir(parents=True)
    model_sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(ckpt / "model.safetensors", lambda p: save_file(model_sd, str(p)))
    files = {"model.safetensors": sha256_file(ckpt / "model.safetensors")}
    full_state = dict(state)
    full_state["rng"] = {"torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        full_state["rng"]["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    if optimizer is not None:
        tensors, meta = _optimizer_tensors(optimizer)
        atomic_write(ckpt / "optim.safetensors", lambda p: save_file(tensors, str(p)))
        files["optim.safetensors"] = sha256_file(ckpt / "optim.safetensors")
        full_state["optimizer"] = meta
    full_state["files"] = files
    full_state["step"] = step
    atomic_write_json(ckpt / "state.json", full_state)
    atomic_write_text(root / "LATEST", ckpt.name + "\n")
    old = sorted(p for p in root.glob("ckpt-*") if p.is_dir() and p.name != ckpt.name)
    for p in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return ckpt


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The folder named by ``LATEST``, or None when no checkpoint was completed."""
    root = Path(directory)
    pointer = root / "LATEST"
    if not pointer.exists():
        return None
    ckpt = root / pointer.read_text().strip()
    if not (ckpt / "state.json").exists():
        raise CheckpointError(f"{pointer} names {ckpt.name}, which has no state.json")
    return ckpt


def load_checkpoint(
    ckpt: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> dict[str, Any]:
    """Verify checksums, load weights (and optimiser, RNG) in place; return the saved state dict."""
    ckpt = Path(ckpt)
    try:
        state = read_json(ckpt / "state.json")
    except (ValueError, FileNotFoundError) as e:
        raise CheckpointError(f"{ckpt}: unreadable state.json ({e})") from None
    for name, digest in state["files"].items():
        path = ckpt / name
        if not path.exists():
            raise CheckpointError(f"{path}: missing")
        if sha256_file(path) != digest:
            raise CheckpointError(f"{path}: checksum mismatch (truncated or corrupted); refusing to load")
    model.load_state_dict(load_file(str(ckpt / "model.safetensors")))
    if optimizer is not None and "optim.safetensors" in state["files"]:
        tensors = load_file(str(ckpt / "optim.safetensors"))
        _load_optimizer(optimizer, tensors, state["optimizer"])
    torch.set_rng_state(torch.tensor(state["rng"]["torch"], dtype=torch.uint8))
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["rng"]["cuda"]])
    return state
