"""Atomic, checksummed training checkpoints (safetensors + JSON, never pickle).

A checkpoint is a folder ``ckpt-<step>/`` holding ``model.safetensors``, ``optim.safetensors`` and
``state.json`` (counters, RNG states, optimiser hyper-parameters, the sha256 of each tensor file and a checksum
of ``state.json``'s own content). It is written in a hidden staging folder and renamed into place only when
complete; then the file ``LATEST`` is replaced (atomically) to name it, and only then are older checkpoints
pruned. So a crash or a full disk at any moment leaves ``LATEST`` naming a complete checkpoint.

Loading verifies every checksum before touching the model. ``resume_checkpoint`` falls back from a damaged
``LATEST`` to the newest intact older checkpoint (saying so), and refuses when none is intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sidrec.utils import atomic_write_text, crash_point, read_json, sha256_file

_NAME = re.compile(r"ckpt-(\d+)(?:\.(\d+))?")


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


def _state_checksum(state: dict[str, Any]) -> str:
    body = {k: v for k, v in state.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _sort_key(path: Path) -> tuple[int, int]:
    m = _NAME.fullmatch(path.name)
    return (int(m.group(1)), int(m.group(2) or 0)) if m else (-1, -1)


def checkpoints(directory: str | Path) -> list[Path]:
    """Every ``ckpt-<step>[.<n>]`` folder under ``directory``, oldest first (staging folders excluded)."""
    root = Path(directory)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and _NAME.fullmatch(p.name)), key=_sort_key)


def save_checkpoint(
    directory: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write ``directory/ckpt-<step>`` and point ``LATEST`` at it; keep the ``keep`` newest.

    A second checkpoint at the same step (e.g. a time budget hit right after resuming) goes to
    ``ckpt-<step>.1`` (``.2``...): the checkpoint ``LATEST`` names is never removed before ``LATEST`` moves on.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".staging-*"):  # left by a crash while writing an earlier checkpoint
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".staging-"))
    try:
        model_sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(model_sd, str(staging / "model.safetensors"))
        files = {"model.safetensors": sha256_file(staging / "model.safetensors")}
        full_state = dict(state)
        full_state["rng"] = {"torch": torch.get_rng_state().tolist()}
        if torch.cuda.is_available():
            full_state["rng"]["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
        if optimizer is not None:
            tensors, meta = _optimizer_tensors(optimizer)
            save_file(tensors, str(staging / "optim.safetensors"))
            files["optim.safetensors"] = sha256_file(staging / "optim.safetensors")
            full_state["optimizer"] = meta
        crash_point("checkpoint.files")
        full_state["files"] = files
        full_state["step"] = step
        full_state["checksum"] = _state_checksum(full_state)
        (staging / "state.json").write_text(json.dumps(full_state) + "\n", encoding="utf-8")
        for name in [*files, "state.json"]:
            _fsync(staging / name)
        crash_point("checkpoint.rename")
        ckpt, n = root / f"ckpt-{step:09d}", 0
        while ckpt.exists():
            n += 1
            ckpt = root / f"ckpt-{step:09d}.{n}"
        os.replace(staging, ckpt)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    crash_point("checkpoint.latest")
    atomic_write_text(root / "LATEST", ckpt.name + "\n")
    crash_point("checkpoint.prune")
    old = [p for p in checkpoints(root) if p != ckpt]
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


def verify_checkpoint(ckpt: str | Path) -> dict[str, Any]:
    """The checkpoint's saved state after checking ``state.json`` and every file against their checksums.

    Raises:
        CheckpointError: naming the missing, truncated or altered file.
    """
    ckpt = Path(ckpt)
    try:
        state = read_json(ckpt / "state.json")
    except (ValueError, FileNotFoundError) as e:
        raise CheckpointError(f"{ckpt}: unreadable state.json ({e})") from None
    if not isinstance(state, dict) or state.get("checksum") != _state_checksum(state):
        raise CheckpointError(f"{ckpt / 'state.json'}: checksum mismatch (altered or corrupted); "
                              "refusing to load")
    for name, digest in state["files"].items():
        path = ckpt / name
        if not path.exists():
            raise CheckpointError(f"{path}: missing")
        if sha256_file(path) != digest:
            raise CheckpointError(f"{path}: checksum mismatch (truncated or corrupted); refusing to load")
    return state


def load_checkpoint(
    ckpt: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> dict[str, Any]:
    """Verify checksums, then load weights (and optimiser, RNG) in place; return the saved state dict."""
    ckpt = Path(ckpt)
    state = verify_checkpoint(ckpt)
    model.load_state_dict(load_file(str(ckpt / "model.safetensors")))
    if optimizer is not None and "optim.safetensors" in state["files"]:
        tensors = load_file(str(ckpt / "optim.safetensors"))
        _load_optimizer(optimizer, tensors, state["optimizer"])
    torch.set_rng_state(torch.tensor(state["rng"]["torch"], dtype=torch.uint8))
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["rng"]["cuda"]])
    return state


def resume_checkpoint(
    directory: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any] | None:
    """Load the newest intact checkpoint under ``directory``; None when there is none at all.

    ``LATEST`` is tried first, then the other checkpoints newest first: a damaged one is reported through
    ``log`` (default: stderr) and skipped, never loaded. Resuming from an older checkpoint only repeats the
    training since then.

    Raises:
        CheckpointError: checkpoints exist but none is intact (start over with ``--fresh``).

    Example:
        >>> state = resume_checkpoint("runs/demo/recommender/checkpoints", model, opt)  # doctest: +SKIP
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    root = Path(directory)
    candidates = checkpoints(root)[::-1]
    pointer = root / "LATEST"
    if pointer.exists():
        named = root / pointer.read_text(encoding="utf-8", errors="replace").strip()
        candidates = [named] + [p for p in candidates if p != named]
    problems = []
    for ckpt in candidates:
        try:
            state = load_checkpoint(ckpt, model, optimizer)  # verifies before touching the model
        except CheckpointError as e:
            problems.append(str(e))
            log(f"warning: skipping damaged checkpoint: {e}")
            continue
        if problems:
            log(f"resuming from the older intact checkpoint {ckpt}")
        return state
    if problems:
        raise CheckpointError(f"{root}: no intact checkpoint to resume from ({'; '.join(problems)}); "
                              "rerun with --fresh to start over")
    return None
