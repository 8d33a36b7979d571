"""sidrec: generative recommendation with learnable semantic IDs.

The package is layered; a module imports only from its own layer or the layers before it (``tests/test_layers.py``
walks every import, and also refuses another package's private ``_names``):

1. core: ``sidrec.utils``, ``sidrec.distributed`` (torchrun process helpers), ``sidrec.rundir`` (run layout),
   ``sidrec.schema`` (the one config schema: YAML -> dataclasses)
2. data: ``sidrec.data`` (loaders, datasets, splits)
3. tokenizers / models: ``sidrec.tokenizers`` (embeddings -> SIDs), ``sidrec.models`` (recommenders, SASRec);
   neither imports the other
4. decoding: ``sidrec.decoding`` (trie-constrained beam search)
5. eval: ``sidrec.eval`` (metrics, evaluation by decoding, SID health, plots)
6. training: ``sidrec.training`` (the training loops, checkpoints, losses, schedules)
7. embeddings: ``sidrec.embeddings`` (item vectors; its ``sasrec`` source trains a SASRec)
8. config: ``sidrec.config`` (the run config, made of every layer's sections)
9. pipeline: ``sidrec.pipeline`` (the stages of a run)
10. serve, then report, then cli / api: ``sidrec.serve``, ``sidrec.report``, ``sidrec.cli``, ``sidrec.api``
    (and ``sidrec.__main__`` over the cli)
"""

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
