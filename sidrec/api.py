"""The Python API: the same objects the CLI uses.

Example:
    >>> import sidrec
    >>> rec = sidrec.load_run("runs/ml-100k-demo")  # doctest: +SKIP
    >>> [r.title for r in rec.recommend(["50", "172", "181"], k=3)]  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from sidrec.serve.service import Recommender


def load_run(run_dir: str | Path, device: str = "auto", allow_stale: bool = False) -> Recommender:
    """Load a finished run directory (dataset, SIDs, selected model) as a ``Recommender``.

    Args:
        run_dir: a directory written by ``sidrec run``.
        device: ``"auto"`` (GPU if available), ``"cpu"`` or ``"cuda"``.
        allow_stale: load a model that an earlier stage has re-run under since it was trained (e.g. ``sidrec
            prepare`` on changed data), with a warning; by default that is an error naming the stage.
    """
    return Recommender.from_run(run_dir, device, allow_stale=allow_stale)
