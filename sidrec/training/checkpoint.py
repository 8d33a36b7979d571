"""Atomic, checksummed training checkpoints (safetensors + JSON, never pickle).

A checkpoint is a folder ``ckpt-<step>/`` holding ``model.safetensors``, ``optim.safetensors`` and
``state.json`` (counters, RNG states, optimiser hyper-parameters, the sha256 of each tensor file and a checksum
of ``state.json``'s own content). It is written in a hidden staging folder and renamed into place only when
complete; then the file ``LATEST`` is replaced (atomically) to name it, and only then are older checkpoints
pruned. So a crash or a full disk at any moment leaves ``LATEST`` naming a complete checkpoint.

Loading verifies every checksum before touching the model. ``resume_checkpoint`` falls back from a damaged
``LATEST`` to the newest intact older checkpoint (saying so), and refuses when none is intact.

The selected-best outputs (``best/``) are part of the checkpoint by reference: ``save_best`` writes an immutable,
checksummed snapshot ``best-<step>/`` when validation improves, the next checkpoint names it in its state
(``state["best_snapshot"]``), and ``publish_best`` copies it to ``best/`` only after that checkpoint exists, and
again on resume. So ``best/`` always comes from the history the resumed run continues, never from a killed
attempt that the resumed run re-did differently (possible on a non-deterministic device).
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

from sidrec.utils import atomic_write, atomic_write_text, crash_point, read_json, sha256_file

_NAME = re.compile(r"ckpt-(\d+)(?:\.(\d+))?")
_BEST_NAME = re.compile(r"best-(\d+)(?:\.(\d+))?")
BEST_KEY = "best_snapshot"  # the checkpoint state's reference to its best snapshot (None before any evaluation)


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


def _unused_name(root: Path, base: str) -> Path:
    """``root/base``, or ``base.1``, ``base.2``... when taken (a second save at the same step)."""
    path, n = root / base, 0
    while path.exists():
        n += 1
        path = root / f"{base}.{n}"
    return path


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

    ``state[BEST_KEY]``, when set, names the best snapshot (``save_best``) that belongs to this checkpoint;
    snapshots that no remaining checkpoint names are removed after pruning.

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
        ckpt = _unused_name(root, f"ckpt-{step:09d}")
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
    _prune_best(root)
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


def _verify_folder(folder: Path, manifest: str) -> dict[str, Any]:
    """The JSON ``folder/manifest`` after checking its own checksum and that of every file it lists."""
    try:
        state = read_json(folder / manifest)
    except (ValueError, FileNotFoundError) as e:
        raise CheckpointError(f"{folder}: unreadable {manifest} ({e})") from None
    if not isinstance(state, dict) or state.get("checksum") != _state_checksum(state):
        raise CheckpointError(f"{folder / manifest}: checksum mismatch (altered or corrupted); refusing to load")
    for name, digest in state["files"].items():
        path = folder / name
        if not path.exists():
            raise CheckpointError(f"{path}: missing")
        if sha256_file(path) != digest:
            raise CheckpointError(f"{path}: checksum mismatch (truncated or corrupted); refusing to load")
    return state


def verify_checkpoint(ckpt: str | Path) -> dict[str, Any]:
    """The checkpoint's saved state after checking ``state.json``, every file and its best snapshot (if any).

    Raises:
        CheckpointError: naming the missing, truncated or altered file.
    """
    ckpt = Path(ckpt)
    state = _verify_folder(ckpt, "state.json")
    best = state.get(BEST_KEY)
    if best is not None:
        if not isinstance(best, str) or not _BEST_NAME.fullmatch(best):
            raise CheckpointError(f"{ckpt / 'state.json'}: {BEST_KEY} {best!r} is not a best snapshot name")
        _verify_folder(ckpt.parent / best, "manifest.json")
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


def save_best(directory: str | Path, step: int, write: Callable[[Path], None]) -> str:
    """Write an immutable snapshot ``directory/best-<step>/`` of new best outputs; return its name for the state.

    ``write(folder)`` fills the folder with what ``best/`` holds (e.g. ``model.safetensors``, ``best.json``,
    ``tokenizer/``); a ``manifest.json`` adds the sha256 of every file and its own checksum. Like a checkpoint it
    is staged and renamed into place when complete. Set ``state[BEST_KEY]`` to the name before the next
    ``save_checkpoint``, then ``publish_best``.

    Why a snapshot referenced by name rather than the best weights inside every checkpoint: the best changes
    rarely, so checkpoints after it share one snapshot. Each checkpoint then writes no extra weights, and the
    retained checkpoints hold at most ``keep`` snapshots (usually one), never one copy each. The checkpoint
    written at the improving step holds the same model weights, but reusing it would keep its optimiser state
    alive too (twice the model size for AdamW), so the snapshot is the cheaper correct reference.

    Example:
        >>> state[BEST_KEY] = save_best(ckpt_dir, step, lambda d: save_module(model, d))  # doctest: +SKIP
        >>> save_checkpoint(ckpt_dir, step, model, opt, state)  # doctest: +SKIP
        >>> publish_best(ckpt_dir, state, out / "best")  # doctest: +SKIP
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".staging-"))
    try:
        write(staging)
        paths = sorted(p for p in staging.rglob("*") if p.is_file())
        manifest: dict[str, Any] = {"step": step,
                                    "files": {p.relative_to(staging).as_posix(): sha256_file(p) for p in paths}}
        manifest["checksum"] = _state_checksum(manifest)
        (staging / "manifest.json").write_text(json.dumps(manifest) + "\n", encoding="utf-8")
        for path in [*paths, staging / "manifest.json"]:
            _fsync(path)
        snapshot = _unused_name(root, f"best-{step:09d}")
        os.replace(staging, snapshot)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return snapshot.name


def publish_best(directory: str | Path, state: dict[str, Any] | None, best_dir: str | Path) -> None:
    """Make ``best_dir`` a copy of the best snapshot a checkpoint's ``state`` names; remove it when none does.

    Call it after the checkpoint that names a new best is saved, and when training (re)starts with the resumed
    checkpoint's state (None for a fresh start): ``best/`` left by a killed attempt is then replaced by the
    snapshot of the checkpoint the run continues from. Each file is replaced atomically. A checkpoint written
    before best snapshots existed has no ``BEST_KEY``: the ``best/`` beside it is adopted as its snapshot (the
    name is added to ``state``), as that older version trusted it.

    Raises:
        CheckpointError: the snapshot is damaged.

    Example:
        >>> publish_best("runs/demo/recommender/checkpoints", saved, "runs/demo/recommender/best")  # doctest: +SKIP
    """
    best_dir = Path(best_dir)
    if state is not None and BEST_KEY not in state:  # from an older version: adopt the best/ it trusted

        def adopt(folder: Path) -> None:
            shutil.copytree(best_dir, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*.tmp"))

        state[BEST_KEY] = save_best(directory, state["step"], adopt) if best_dir.is_dir() else None
        return
    name = state[BEST_KEY] if state is not None else None
    if name is None:
        shutil.rmtree(best_dir, ignore_errors=True)
        return
    snapshot = Path(directory) / name
    files = _verify_folder(snapshot, "manifest.json")["files"]
    for rel in files:
        atomic_write(best_dir / rel, lambda p, src=snapshot / rel: shutil.copyfile(src, p))


def _prune_best(root: Path) -> None:
    """Remove best snapshots that no remaining checkpoint names (superseded, or left by a killed attempt)."""
    named = set()
    for ckpt in checkpoints(root):
        try:
            state = read_json(ckpt / "state.json")
        except (ValueError, FileNotFoundError):  # a damaged checkpoint is never resumed
            continue
        if isinstance(state, dict):
            named.add(state.get(BEST_KEY))
    for path in root.iterdir():
        if path.is_dir() and _BEST_NAME.fullmatch(path.name) and path.name not in named:
            shutil.rmtree(path, ignore_errors=True)
