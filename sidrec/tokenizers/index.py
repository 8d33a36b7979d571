"""Semantic-ID maps in and out: LC-Rec/LETTER ``*.index.json`` files, and JSON/parquet exports for LLMs.

An LC-Rec/LETTER index file is one JSON object, item id (the 0-based item index of that tool's data, as a
string) -> the item's tokens, one per level, the level named by a letter (a, b, c, ...)::

    {"0": ["<a_128>", "<b_241>", "<c_146>", "<d_235>"], "1": ["<a_171>", "<b_57>", "<c_141>", "<d_231>"], ...}

``read_index_json`` turns such a file into codes ``(N, L)`` and ``write_index_json`` writes one. A run uses a
file from another tool with ``tokenizer.name: imported`` and ``tokenizer.params: {path: ...}``
(``ImportedConfig``): nothing is fitted, items sharing a code tuple get the dedup token, and the level sizes come
from the data. ``export_sids`` writes a run's SIDs, with item keys, titles and token strings, as JSON, parquet or
index JSON.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from sidrec.data.dataset import Dataset
from sidrec.data.loaders import load_json
from sidrec.schema import from_dict
from sidrec.tokenizers.base import assign_semantic_ids, codebook_health, require
from sidrec.utils import atomic_write, atomic_write_json, atomic_write_text, sha256_file

IMPORTED = "imported"  # the tokenizer.name that reads SIDs from an index file instead of fitting a tokenizer
FORMATS = ("json", "parquet", "index-json")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"  # level l is named by letter l: at most 26 levels
_TOKEN = re.compile(r"<([A-Za-z]+)_(-?[0-9]+)>")


def sid_tokens(sid: Sequence[int]) -> list[str]:
    """The LC-Rec token strings of one SID.

    Example:
        >>> sid_tokens([12, 7, 3, 0])
        ['<a_12>', '<b_7>', '<c_3>', '<d_0>']
    """
    if len(sid) > len(_LETTERS):
        raise ValueError(f"sid: {len(sid)} levels, index tokens name at most {len(_LETTERS)} (a..z)")
    return [f"<{_LETTERS[level]}_{int(code)}>" for level, code in enumerate(sid)]


def parse_token(token: Any, level: int, where: str, codebook_size: int | None = None) -> int:
    """The code of one token such as ``"<b_7>"`` at 0-based ``level``; errors name ``where`` and the token.

    Example:
        >>> parse_token("<b_7>", 1, "item '0'")
        7
    """
    letter = _LETTERS[level]
    match = _TOKEN.fullmatch(token) if isinstance(token, str) else None
    if match is None:
        raise ValueError(f"{where}: malformed token {token!r}, expected '<{letter}_CODE>', CODE an integer")
    if match[1] != letter:
        raise ValueError(f"{where}: token {token!r} has level letter {match[1]!r}, expected {letter!r} "
                         "(the tokens of an item name the levels a, b, c, ... in order)")
    code = int(match[2])
    if code < 0:
        raise ValueError(f"{where}: token {token!r} has a negative code")
    if codebook_size is not None and code >= codebook_size:
        raise ValueError(f"{where}: token {token!r}: code {code} >= codebook_size {codebook_size}")
    return code


def read_index_json(path: str | Path, dataset: Dataset, keys: Literal["index", "item"] = "index",
                    codebook_size: int | None = None) -> np.ndarray:
    """Codes ``(N, L)`` int64 of every item of ``dataset`` from an LC-Rec/LETTER ``*.index.json`` file.

    Args:
        path: the index file.
        dataset: the items the file must cover, each exactly once.
        keys: what the file's keys are: ``"index"``, the 0-based item index (LC-Rec's item id; for a dataset
            read by the ``lcrec`` loader it is the same number), or ``"item"``, the dataset's item keys (e.g.
            ASINs).
        codebook_size: if given, every code must be below it.

    Returns:
        ``codes[i]`` = the codes of item ``i`` in level order.

    Raises:
        FileNotFoundError / ValueError naming the file and the item (and token) at fault: keys that name no
        item of the dataset, items without a SID, malformed tokens, level letters out of order, negative codes,
        lists of different lengths, codes >= ``codebook_size``.

    Example:
        >>> codes = read_index_json("data/Instruments/Instruments.index.json", ds)  # doctest: +SKIP
        >>> codes.shape  # doctest: +SKIP
        (9922, 4)
    """
    path = Path(path)
    if keys not in ("index", "item"):
        raise ValueError(f"keys: expected 'index' or 'item', got {keys!r}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    raw = load_json(path)  # duplicate keys are errors: an item cannot be listed twice
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{path}: expected a non-empty JSON object {{item: [\"<a_12>\", \"<b_7>\", ...]}}")
    n = dataset.num_items
    index = dataset.item_index() if keys == "item" else {}
    rows: dict[int, list[int]] = {}
    first: str | None = None  # the key of the first item: its token count is the expected one
    for key, tokens in raw.items():
        where = f"{path}: item {key!r}"
        if keys == "item":
            if key not in index:
                raise ValueError(f"{where}: not an item key of dataset {dataset.name!r}")
            item = index[key]
        elif key.isascii() and key.isdigit() and key == str(int(key)) and int(key) < n:
            item = int(key)
        else:
            raise ValueError(f"{where}: not an item index of dataset {dataset.name!r} (items are 0..{n - 1})")
        if not isinstance(tokens, list) or not tokens:
            raise ValueError(f"{where}: expected a non-empty list of tokens like \"<a_12>\", got {tokens!r}")
        if first is None:
            first = key
            if len(tokens) > len(_LETTERS):
                raise ValueError(f"{where}: {len(tokens)} tokens, index files have at most {len(_LETTERS)}")
        elif len(tokens) != len(raw[first]):
            raise ValueError(f"{where}: {len(tokens)} tokens, expected {len(raw[first])} as item {first!r}")
        rows[item] = [parse_token(t, level, f"{where}, token {level + 1}", codebook_size)
                      for level, t in enumerate(tokens)]
    if len(rows) < n:
        missing = next(i for i in range(n) if i not in rows)
        raise ValueError(f"{path}: no SID for {n - len(rows)} of the {n} items of dataset {dataset.name!r}, "
                         f"e.g. item {missing} (key {dataset.item_keys[missing]!r})")
    return np.array([rows[i] for i in range(n)], dtype=np.int64)


def write_index_json(path: str | Path, sids: np.ndarray, keys: Sequence[str] | None = None) -> Path:
    """Write SIDs ``(N, L)`` as an LC-Rec/LETTER index file, atomically.

    Args:
        path: the file to write.
        sids: non-negative codes, one row per item.
        keys: the JSON key of each row; default ``"0"``, ``"1"``, ... (the item index, as LC-Rec uses).

    Example:
        >>> write_index_json("Toy.index.json", np.array([[1, 2], [1, 3]]))  # doctest: +SKIP
        # {"0": ["<a_1>", "<b_2>"], "1": ["<a_1>", "<b_3>"]}
    """
    sids = np.asarray(sids)
    if sids.ndim != 2 or not np.issubdtype(sids.dtype, np.integer):
        raise ValueError(f"sids: expected an integer array (N, L), got {sids.dtype} {sids.shape}")
    if sids.size and sids.min() < 0:
        raise ValueError("sids: codes must be >= 0")
    keys = [str(i) for i in range(len(sids))] if keys is None else [str(k) for k in keys]
    if len(keys) != len(sids) or len(set(keys)) != len(keys):
        raise ValueError(f"keys: expected {len(sids)} distinct keys, got {len(keys)} ({len(set(keys))} unique)")
    obj = {key: sid_tokens(row) for key, row in zip(keys, sids.tolist())}
    return atomic_write_text(path, json.dumps(obj) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# tokenizer.name: imported


@dataclass
class ImportedConfig:
    """``tokenizer.params`` of ``tokenizer.name: imported``: SIDs read from an LC-Rec/LETTER index file.

    Args:
        path: the ``*.index.json`` file (in a run config: absolute or relative to ``$SIDREC_DATA``, see
            ``sidrec.config.input_path``; here as given).
        keys: ``"index"`` (0-based item index, LC-Rec's item ids) or ``"item"`` (the dataset's item keys).
        codebook_size: the codebook size the file was made with; every code must be below it and it is the
            size of every level. None: each level's size is its largest code + 1.

    Example:
        >>> ImportedConfig(path="Instruments.index.json", codebook_size=256).keys
        'index'
    """

    path: str = ""
    keys: Literal["index", "item"] = "index"
    codebook_size: int | None = None

    def __post_init__(self) -> None:
        require(bool(self.path), "path", "required: the *.index.json file to import")
        require(self.codebook_size is None or self.codebook_size >= 1, "codebook_size",
                f"must be >= 1, got {self.codebook_size}")


class ImportedSids(NamedTuple):
    """What ``import_sids`` returns: what the tokenize stage writes into ``tokenizer/``.

    Attributes:
        sids: ``(N, L)`` or, when some items share a code tuple, ``(N, L + 1)`` with the dedup token.
        level_sizes: vocabulary size of each column of ``sids``.
        meta: the ``tokenizer.json`` content (name, config, source file and sha256, levels, dedup).
        health: ``codebook_health`` of the imported codes ``(N, L)``.
    """

    sids: np.ndarray
    level_sizes: list[int]
    meta: dict[str, Any]
    health: dict[str, Any]


def imported_config(params: Mapping[str, Any]) -> ImportedConfig:
    """The checked ``ImportedConfig``; errors name ``tokenizer.params.<key>``, a missing file its path."""
    cfg = from_dict(ImportedConfig, params, "tokenizer.params")
    if not Path(cfg.path).is_file():
        raise FileNotFoundError(f"tokenizer.params.path: {cfg.path}: file not found")
    return cfg


def import_sids(params: Mapping[str, Any], dataset: Dataset) -> ImportedSids:
    """Read SIDs for every item of ``dataset`` from ``params["path"]``: nothing is fitted.

    The dedup token (``assign_semantic_ids``) is appended only when some items share all L codes, so a
    collision-free file is used exactly as it is.

    Example:
        >>> imp = import_sids({"path": "Instruments.index.json", "codebook_size": 256}, ds)  # doctest: +SKIP
        >>> imp.sids.shape, imp.level_sizes  # doctest: +SKIP
        ((9922, 5), [256, 256, 256, 256, 2])
    """
    cfg = imported_config(params)
    codes = read_index_json(cfg.path, dataset, cfg.keys, cfg.codebook_size)  # (N, L)
    num_levels = codes.shape[1]
    sizes = [cfg.codebook_size] * num_levels if cfg.codebook_size else (codes.max(0) + 1).tolist()
    health = codebook_health(torch.as_tensor(codes), sizes)
    dedup = health["max_group"] > 1
    sids = assign_semantic_ids(torch.as_tensor(codes)).numpy() if dedup else codes
    level_sizes = [int(s) for s in sizes] + ([int(sids[:, -1].max()) + 1] if dedup else [])
    meta = {
        "name": IMPORTED,
        "config": dataclasses.asdict(cfg),
        "source": {"path": str(Path(cfg.path).resolve()), "sha256": sha256_file(cfg.path)},
        "num_levels": num_levels,
        "dedup": dedup,
        "level_sizes": level_sizes,
    }
    return ImportedSids(sids, level_sizes, meta, health)


# ---------------------------------------------------------------------------------------------------------------
# export


def sid_records(dataset: Dataset, sids: np.ndarray) -> list[dict[str, Any]]:
    """One record per item: index, item key, title (None without a title), sid, tokens and the joined tokens.

    Example:
        >>> sid_records(ds, sids)[0]  # doctest: +SKIP
        {'index': 0, 'item': 'B0001', 'title': 'Pen', 'sid': [3, 1, 0], 'tokens': ['<a_3>', '<b_1>', '<c_0>'],
         'sid_string': '<a_3><b_1><c_0>'}
    """
    if len(sids) != dataset.num_items:
        raise ValueError(f"sids: {len(sids)} rows for {dataset.num_items} items")
    titles = dataset.item_text.get("title") or [None] * dataset.num_items
    out = []
    for i, sid in enumerate(np.asarray(sids).tolist()):
        tokens = sid_tokens(sid)
        out.append({"index": i, "item": dataset.item_keys[i], "title": titles[i], "sid": sid,
                    "tokens": tokens, "sid_string": "".join(tokens)})
    return out


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as e:
        raise ImportError(f"parquet export needs pyarrow ({e}); install: pip install 'sidrec[parquet]'") from e
    return pyarrow, pyarrow.parquet


def export_sids(dataset: Dataset, sids: np.ndarray, level_sizes: Sequence[int], path: str | Path,
                fmt: str = "json", keys: Literal["index", "item"] = "index") -> Path:
    """Write the SIDs of every item for downstream (LLM) recommenders, atomically.

    Formats:
        ``json``: ``{"num_items", "level_sizes", "items": [sid_records...]}``.
        ``parquet``: one row per item, columns ``index, item, title, sid, tokens, sid_string``; the level
            sizes in the schema metadata under ``sidrec``. Needs pyarrow (the ``parquet`` extra), imported lazily.
        ``index-json``: the LC-Rec/LETTER index file, keyed by item index (LC-Rec's item ids for the ``lcrec``
            loader) or, with ``keys="item"``, by item key; ``read_index_json`` with the same ``keys`` reads it back.

    Example:
        >>> export_sids(ds, sids, sizes, "runs/demo/sids.parquet", "parquet")  # doctest: +SKIP
    """
    if fmt not in FORMATS:
        raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if keys not in ("index", "item"):
        raise ValueError(f"keys: expected 'index' or 'item', got {keys!r}")
    if fmt == "index-json":
        return write_index_json(path, sids, dataset.item_keys if keys == "item" else None)
    if fmt == "parquet":
        pa, pq = _pyarrow()  # before any work: a missing pyarrow fails fast
        records = sid_records(dataset, sids)
        table = pa.Table.from_pylist(records, schema=pa.schema([
            ("index", pa.int64()), ("item", pa.string()), ("title", pa.string()),
            ("sid", pa.list_(pa.int64())), ("tokens", pa.list_(pa.string())), ("sid_string", pa.string()),
        ], metadata={"sidrec": json.dumps({"level_sizes": [int(s) for s in level_sizes]})}))
        return atomic_write(path, lambda p: pq.write_table(table, str(p)))
    records = sid_records(dataset, sids)
    return atomic_write_json(path, {"num_items": len(records), "level_sizes": [int(s) for s in level_sizes],
                                    "items": records})
