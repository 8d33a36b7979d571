"""sidrec: generative recommendation with learnable semantic IDs."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_run"]


def __getattr__(name: str) -> Any:
    # Lazy, so that `import sidrec` (and `sidrec --help`) does not import torch.
    if name == "load_run":
        from sidrec.api import load_run

        return load_run
    raise AttributeError(f"module 'sidrec' has no attribute {name!r}")
