"""Small shared helpers: atomic file writes, hashing, seeding and run metadata."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import platform
import random
import re
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

_CRASH_COUNTS: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Test hook for crash-safety tests: SIGKILL this process at a named point when asked to.

    ``SIDREC_TEST_KILL_AT=<name>@<n>`` kills the process the n-th time (1-based) it reaches
    ``crash_point(name)``; unset (always, outside those tests) this does nothing. Points: ``atomic_write``
    (data written and synced, not yet renamed), ``checkpoint.files`` / ``checkpoint.rename`` /
    ``checkpoint.latest`` / ``checkpoint.prune`` (the stages of ``save_checkpoint``) and ``train.step``
    (after an optimiser step).

    Example:
        >>> crash_point("train.step")  # a no-op unless SIDREC_TEST_KILL_AT=train.step@<n> is set
    """
    spec = os.environ.get("SIDREC_TEST_KILL_AT")
    if not spec:
        return
    target, _, nth = spec.partition("@")
    if target != name:
        return
    _CRASH_COUNTS[name] = _CRASH_COUNTS.get(name, 0) + 1
    if _CRASH_COUNTS[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


# An atomic write's temporary file: ``.<target>.<host>.<pid>.<random>.tmp`` beside its target. Naming the writer
# lets a later writer tell a temp left by a killed process (removable) from one a live process is still filling.
_TEMP = re.compile(r"\.(?P<target>.+)\.(?P<host>[^.]+)\.(?P<pid>\d+)\.[^.]+\.tmp")


def _host() -> str:
    return socket.gethostname().replace(".", "_") or "localhost"


def _process_alive(pid: int) -> bool:
    if os.name != "posix":  # no harmless liveness probe (os.kill would terminate it): assume it is writing
        return True
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


def remove_stale_temps(directory: str | Path, target: str | None = None, recursive: bool = False) -> list[Path]:
    """Delete atomic-write temporary files left by killed writers; return what was removed.

    A temp is stale when its writer, named in the file name, ran on this host and is no longer alive. Temps of
    live processes (this one included) and of other hosts sharing the folder are never touched. A recycled pid
    only keeps a stale file a little longer, it never gets a live writer's file deleted.

    Args:
        directory: the folder to clean.
        target: only temps of this file name (``atomic_write`` cleans up after its own target this way).
        recursive: also clean every sub-folder (a run directory at open).

    Example:
        >>> remove_stale_temps("runs/demo", recursive=True)  # doctest: +SKIP
        [PosixPath('runs/demo/.metrics.json.box.4242.k2j4x1q_.tmp')]
    """
    directory = Path(directory)
    pattern = f".{glob.escape(target)}.*.tmp" if target else ".*.tmp"
    removed = []
    for path in directory.rglob(pattern) if recursive else directory.glob(pattern):
        m = _TEMP.fullmatch(path.name)
        if (m is None or (target and m["target"] != target) or m["host"] != _host()
                or _process_alive(int(m["pid"]))):
            continue
        path.unlink(missing_ok=True)  # another cleaner may have got there first
        removed.append(path)
    return removed


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write a file atomically: ``write(tmp_path)`` fills a temporary file that is renamed over ``path``.

    A crash at any moment leaves either the old file or the new one, never a half-written file. The temporary
    file (``.<name>.<host>.<pid>.<random>.tmp``) of a writer killed before the rename is removed by the next write
    to the same ``path`` (see ``remove_stale_temps``).

    Example:
        >>> atomic_write("out/weights.safetensors", lambda p: save_file(tensors, str(p)))  # doctest: +SKIP
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, target=path.name)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_host()}.{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; a written artefact should be readable like any other file
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        crash_point("atomic_write")
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def save_npy(path: str | Path, array: np.ndarray) -> None:
    """``np.save`` to exactly ``path`` (no pickles), e.g. as the writer of ``atomic_write``."""
    with open(path, "wb") as f:  # a file object: np.save would append ".npy" to a temporary path
        np.save(f, array, allow_pickle=False)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file; a parse error names the file, line and column."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator seeded with ``seed`` for explicit use."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def cpu_bf16_isa(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """The CPU's native bf16 matrix instructions from /proc/cpuinfo: ``"amx_bf16"`` (AMX tiles), else
    ``"avx512_bf16"`` (bf16 dot products), else None. With either, oneDNN runs bf16 matrix products faster than
    fp32 (TIGER's training step: 2.3x with avx512_bf16 on an AMD EPYC, docs/benchmarks.md); without them bf16
    autocast on the CPU is emulated and slower, not faster."""
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            flags = next((set(line.split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return None
    return next((isa for isa in ("amx_bf16", "avx512_bf16") if isa in flags), None)


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 matrix instructions (``cpu_bf16_isa``)."""
    return cpu_bf16_isa() is not None


def bf16_autocast(device: torch.device, bf16: bool) -> bool:
    """Whether to run under bf16 autocast: asked for (``bf16``) and fast here (CUDA, or a CPU with native bf16)."""
    return bf16 and (device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16()))


def adamw(params: Any, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """``torch.optim.AdamW``, with torch's fused kernel when every parameter is on the CPU or CUDA.

    One kernel updates every parameter instead of ~10 tensor ops each (timings: docs/benchmarks.md); the update is
    AdamW's, equal to the per-parameter loop up to float rounding.

    Args:
        params: parameters or param groups, as for ``torch.optim.AdamW``.
        lr, weight_decay: the defaults of every group.

    Example:
        >>> opt = adamw(torch.nn.Linear(4, 2).parameters(), lr=1e-3, weight_decay=0.01)
        >>> opt.defaults["fused"]
        True
    """
    params = [{**g, "params": list(g["params"])} if isinstance(g, dict) else g for g in params]
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in tensors)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def run_metadata(seed: int) -> dict[str, Any]:
    """What a run records about where it ran: seed, library versions, git commit, device, CPU threads.

    The thread count matters: torch splits CPU reductions by thread, so the same seed gives bit-identical results
    only at the same ``cpu_threads`` (e.g. an RQ-VAE fit at 1 and at 2 threads assigns different codes).
    """
    import sidrec

    return {
        "seed": seed,
        "sidrec": sidrec.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
        "git_commit": git_commit(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_bf16": cpu_bf16_isa(),  # with train.bf16 / eval.bf16: whether (and how) CPU runs used bf16 autocast
    }
