"""The one internal dataset every loader produces: an item table and time-ordered user sequences."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sidrec.utils import atomic_write, atomic_write_json, read_json


@dataclass
class Dataset:
    """Items and users of one dataset, with 0-based internal item indices.

    Args:
        name: dataset name (e.g. ``"ml-100k"``).
        item_keys: external id of each item (dataset's own id or ASIN), index = internal item index.
        user_keys: external id of each user, aligned with ``sequences``.
        sequences: per user, the time-ordered internal item indices (int64 arrays).
        item_text: optional text fields, ``{field: [value or None per item]}`` (e.g. ``title``, ``brand``).
        item_attributes: optional integer attribute ids per item (for attribute embeddings).
        source: provenance (files read, their sha256, loader and options).

    Example:
        >>> ds = Dataset("toy", ["a", "b"], ["u1"], [np.array([0, 1])], item_text={"title": ["A", "B"]})
        >>> ds.num_items, ds.title(1)
        (2, 'B')
    """

    name: str
    item_keys: list[str]
    user_keys: list[str]
    sequences: list[np.ndarray]
    item_text: dict[str, list[str | None]] = field(default_factory=dict)
    item_attributes: list[list[int]] | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.item_keys)
        if len(self.user_keys) != len(self.sequences):
            raise ValueError(f"{self.name}: {len(self.user_keys)} user keys but {len(self.sequences)} sequences")
        if len(set(self.user_keys)) != len(self.user_keys):
            raise ValueError(f"{self.name}: duplicate user keys")
        if len(set(self.item_keys)) != n:
            raise ValueError(f"{self.name}: duplicate item keys")
        for fld, values in self.item_text.items():
            if len(values) != n:
                raise ValueError(f"{self.name}: item_text[{fld!r}] has {len(values)} values for {n} items")
        if self.item_attributes is not None and len(self.item_attributes) != n:
            raise ValueError(f"{self.name}: item_attributes has {len(self.item_attributes)} rows for {n} items")
        for u, seq in zip(self.user_keys, self.sequences):
            if len(seq) and (seq.min() < 0 or seq.max() >= n):
                raise ValueError(f"{self.name}: user {u!r} has an item index outside 0..{n - 1}")

    @property
    def num_items(self) -> int:
        return len(self.item_keys)

    @property
    def num_users(self) -> int:
        return len(self.user_keys)

    @property
    def num_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))

    def title(self, item: int) -> str:
        """A human-readable name: the title field if present, else the item key."""
        titles = self.item_text.get("title")
        if titles is not None and titles[item]:
            return str(titles[item])
        return str(self.item_keys[item])

    def item_index(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self.item_keys)}

    def digest(self) -> str:
        """sha256 of what later stages read: items (keys, text, attributes), users and sequences.

        The name and the provenance are left out, so re-reading unchanged files gives the same digest.
        """
        h = hashlib.sha256(json.dumps([self.item_keys, self.user_keys, self.item_text, self.item_attributes],
                                      sort_keys=True).encode("utf-8"))
        lengths = np.array([len(s) for s in self.sequences], dtype=np.int64)
        h.update(lengths.tobytes())
        for seq in self.sequences:
            h.update(np.asarray(seq, dtype=np.int64).tobytes())
        return h.hexdigest()

    def stats(self) -> dict[str, Any]:
        lens = np.array([len(s) for s in self.sequences])
        seen = np.zeros(self.num_items, dtype=bool)
        for seq in self.sequences:
            seen[seq] = True
        return {
            "users": self.num_users,
            "items": self.num_items,
            "interactions": self.num_interactions,
            "min_len": int(lens.min()) if len(lens) else 0,
            "avg_len": float(lens.mean()) if len(lens) else 0.0,
            # items of the item files in no user's sequence: never a target; many hint at a cut interaction file
            "items_without_interactions": int((~seen).sum()),
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``items.json`` + ``sequences.npz`` + ``dataset.json`` atomically into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        lengths = np.array([len(s) for s in self.sequences], dtype=np.int64)
        flat = np.concatenate(self.sequences).astype(np.int64) if self.sequences else np.zeros(0, np.int64)

        def write_npz(p: Path) -> None:
            with open(p, "wb") as f:
                np.savez(f, lengths=lengths, items=flat)

        atomic_write(d / "sequences.npz", write_npz)
        items = {"item_keys": self.item_keys, "item_text": self.item_text, "item_attributes": self.item_attributes}
        atomic_write(d / "items.json", lambda p: p.write_text(json.dumps(items), encoding="utf-8"))
        atomic_write_json(d / "dataset.json", {"name": self.name, "user_keys": self.user_keys,
                                              "source": self.source, "stats": self.stats(),
                                              "digest": self.digest()})
        return d

    @classmethod
    def load(cls, directory: str | Path) -> Dataset:
        d = Path(directory)
        meta = read_json(d / "dataset.json")
        items = read_json(d / "items.json")
        with np.load(d / "sequences.npz", allow_pickle=False) as z:
            lengths, flat = z["lengths"], z["items"]
        sequences = np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else []
        return cls(meta["name"], items["item_keys"], meta["user_keys"], list(sequences),
                   item_text=items["item_text"], item_attributes=items["item_attributes"], source=meta["source"])
