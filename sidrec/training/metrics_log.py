"""The training log of a run: one JSON record per line in ``metrics.jsonl``, optionally mirrored to TensorBoard.

Two kinds of record share the file, told apart by ``"kind"``:

    {"kind": "step", "step": 50, "epoch": 0, "loss": 3.91, "lr": 0.0005, "samples_per_second": 4210.3}
    {"kind": "epoch", "step": 120, "epoch": 0, "loss": 3.42, "lr": 0.0012, "train_seconds": 7.1,
     "samples_per_second": 4300.2, "valid.recall@10": 0.05, "valid.ndcg@10": 0.026, "valid_seconds": 2.3}

``step`` is the number of optimiser steps done when the record was written, so it never decreases along the
file; a resumed run first drops the records written after its checkpoint (a crash between a log line and the
next checkpoint would otherwise repeat those steps).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sidrec.utils import atomic_write_text


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All records of a JSON-lines file; a malformed line is an error naming the file and line.

    Example:
        >>> read_jsonl("runs/demo/recommender/metrics.jsonl")[0]["kind"]  # doctest: +SKIP
        'step'
    """
    path = Path(path)
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: invalid JSON: {e.msg}") from None
    return records


class MetricsLog:
    """Append training records to ``path`` (JSON lines) and, when ``tensorboard_dir`` is given, to TensorBoard.

    Args:
        path: the ``metrics.jsonl`` file.
        resume_step: ``None`` starts a new file; a step count keeps the records with ``step <= resume_step``
            (those covered by the checkpoint being resumed) and appends after them.
        tensorboard_dir: where a ``SummaryWriter`` puts its event files (needs the ``tensorboard`` package).

    Example:
        >>> with MetricsLog("out/metrics.jsonl") as log:  # doctest: +SKIP
        ...     log.write({"kind": "step", "step": 50, "epoch": 0, "loss": 3.9, "lr": 1e-3})
    """

    def __init__(self, path: str | Path, resume_step: int | None = None,
                 tensorboard_dir: str | Path | None = None):
        self.path = Path(path)
        self.writer = _summary_writer(tensorboard_dir) if tensorboard_dir is not None else None
        kept = []
        if resume_step is not None and self.path.exists():
            kept = [r for r in read_jsonl(self.path) if r.get("step", 0) <= resume_step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, rec: dict[str, Any]) -> None:
        """Append one record (flushed at once, so a crash loses at most the line being written)."""
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        if self.writer is not None:
            # Step records go under train/, epoch records under epoch/ (valid.* metrics under valid/).
            section = "train" if rec.get("kind") == "step" else "epoch"
            for key, value in rec.items():
                if key in ("kind", "step", "epoch") or not isinstance(value, (int, float)):
                    continue
                tag = key.replace(".", "/", 1) if key.startswith("valid.") else f"{section}/{key}"
                self.writer.add_scalar(tag, value, global_step=rec["step"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _summary_writer(log_dir: str | Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError("train.tensorboard needs the tensorboard package: pip install tensorboard "
                          "(or the dev extra: pip install 'sidrec[dev]')") from None
    return SummaryWriter(log_dir=str(log_dir))
