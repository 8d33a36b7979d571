"""Item tokenizers: embeddings -> semantic IDs. ``TOKENIZERS`` is the explicit registry of the built-in ones.

The k-means helpers live in ``sidrec.tokenizers.kmeans`` and are not re-exported here: a package attribute
named ``kmeans`` would shadow that module.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.torch import load_file

from sidrec.rundir import SIDS_FILE
from sidrec.schema import from_dict
from sidrec.tokenizers.base import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    Assignment,
    QuantizerOutput,
    Tokenizer,
    assign_semantic_ids,
    codebook_health,
)
from sidrec.tokenizers.cost import CoST, CoSTConfig
from sidrec.tokenizers.diger import DIGER, DIGERConfig
from sidrec.tokenizers.index import IMPORTED, ImportedConfig
from sidrec.tokenizers.letter import Letter, LetterConfig
from sidrec.tokenizers.residual import ResidualQuantizer
from sidrec.tokenizers.rqkmeans import RQKMeans, RQKMeansConfig
from sidrec.tokenizers.rqvae import RQVAE, RQVAEConfig
from sidrec.utils import read_json

TOKENIZERS: dict[str, tuple[type[Tokenizer], type]] = {
    "rqvae": (RQVAE, RQVAEConfig),
    "rqkmeans": (RQKMeans, RQKMeansConfig),
    "letter": (Letter, LetterConfig),
    "cost": (CoST, CoSTConfig),
    "diger": (DIGER, DIGERConfig),
}


def build_tokenizer(name: str, params: Mapping[str, Any], input_dim: int) -> Tokenizer:
    """Construct an untrained tokenizer from its registry name and a plain parameter mapping.

    Parameters are checked strictly: an unknown key or a value of the wrong type raises ``ValueError`` naming
    ``tokenizer.params.<key>``.

    Example:
        >>> tok = build_tokenizer("rqvae", {"codebook_size": 128, "epochs": 100}, input_dim=384)
    """
    if name not in TOKENIZERS:
        raise ValueError(f"tokenizer.name: unknown tokenizer {name!r} (known: {', '.join(TOKENIZERS)})")
    tokenizer_cls, config_cls = TOKENIZERS[name]
    return tokenizer_cls(from_dict(config_cls, params, "tokenizer.params"), input_dim)


def tokenizer_config(name: str) -> type:
    """The config class that ``tokenizer.params`` of tokenizer ``name`` is read into: a ``TOKENIZERS`` entry's, or
    ``ImportedConfig`` for ``imported`` (SIDs read from another tool's file, ``sidrec.tokenizers.index``).

    Example:
        >>> tokenizer_config("rqvae").__name__, tokenizer_config("imported").__name__
        ('RQVAEConfig', 'ImportedConfig')
    """
    if name == IMPORTED:
        return ImportedConfig
    if name not in TOKENIZERS:
        raise ValueError(f"tokenizer.name: unknown tokenizer {name!r} (known: {', '.join([*TOKENIZERS, IMPORTED])})")
    return TOKENIZERS[name][1]


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Rebuild a saved tokenizer from ``tokenizer.json`` and load ``tokenizer.safetensors`` into it (on CPU).

    Example:
        >>> tok = load_tokenizer("runs/ml-100k/tokenizer")  # doctest: +SKIP
    """
    directory = Path(directory)
    meta_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    meta = read_json(meta_path)
    if not isinstance(meta, dict) or not {"name", "config", "input_dim"} <= meta.keys():
        raise ValueError(f"{meta_path}: expected an object with keys 'name', 'config', 'input_dim'")
    try:
        tokenizer = build_tokenizer(meta["name"], meta["config"], meta["input_dim"])
    except ValueError as e:
        raise ValueError(f"{meta_path}: {e}") from None
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path}: file not found")
    try:
        state = load_file(str(weights_path))
        tokenizer.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError) as e:
        raise ValueError(f"{weights_path}: does not match {meta_path}: {e}") from None
    return tokenizer.eval()


def load_sids(tokenizer_dir: str | Path) -> tuple[np.ndarray, list[int]]:
    """Item SIDs (N, Lc) and the level sizes (codebook size per learned level, max group for the dedup level).

    Imported SIDs store their level sizes in ``tokenizer.json``.
    """
    tdir = Path(tokenizer_dir)
    sids = np.load(tdir / SIDS_FILE, allow_pickle=False)
    tok_meta = read_json(tdir / CONFIG_FILE)
    if "level_sizes" in tok_meta:
        return sids, [int(s) for s in tok_meta["level_sizes"]]
    k = int(tok_meta["config"]["codebook_size"])
    return sids, [k] * (sids.shape[1] - 1) + [int(sids[:, -1].max()) + 1]


__all__ = [
    "TOKENIZERS",
    "Assignment",
    "CoST",
    "CoSTConfig",
    "DIGER",
    "DIGERConfig",
    "Letter",
    "LetterConfig",
    "QuantizerOutput",
    "RQKMeans",
    "RQKMeansConfig",
    "RQVAE",
    "RQVAEConfig",
    "ResidualQuantizer",
    "Tokenizer",
    "assign_semantic_ids",
    "build_tokenizer",
    "codebook_health",
    "load_sids",
    "load_tokenizer",
    "tokenizer_config",
]
