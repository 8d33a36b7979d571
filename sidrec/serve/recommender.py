"""Load a trained run and recommend items for a history of item keys."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sidrec.data.dataset import Dataset
from sidrec.decoding.beam import constrained_beam_search
from sidrec.decoding.trie import SidTrie
from sidrec.eval.evaluate import model_inputs
from sidrec.models.tiger import load_model
from sidrec.pipeline import load_sids
from sidrec.utils import resolve_device


@dataclass
class Recommendation:
    item: str
    title: str
    score: float
    sid: list[int]


class Recommender:
    """A trained recommender with its catalogue.

    Example:
        >>> rec = Recommender.from_run("runs/ml-100k")  # doctest: +SKIP
        >>> [r.title for r in rec.recommend(["50", "172", "181"], k=3)]  # doctest: +SKIP
    """

    def __init__(self, dataset: Dataset, model, item_sids: np.ndarray, level_sizes: list[int], device="cpu"):
        self.dataset = dataset
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.item_sids = torch.as_tensor(item_sids, device=self.device)
        self.trie = SidTrie(self.item_sids, level_sizes).to(self.device)
        self.max_history = model.cfg.max_history
        self._index = dataset.item_index()

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str = "auto") -> Recommender:
        run = Path(run_dir)
        for need in ("data/dataset.json", "tokenizer/sids.npy", "model/model.json"):
            if not (run / need).exists():
                raise FileNotFoundError(f"{run / need}: missing; is {run} a finished run directory?")
        sids, sizes = load_sids(run / "tokenizer")
        return cls(Dataset.load(run / "data"), load_model(run / "model"), sids, sizes, str(resolve_device(device)))

    def item_indices(self, history: list[str]) -> list[int]:
        unknown = [k for k in history if k not in self._index]
        if unknown:
            raise KeyError(f"unknown item key(s): {', '.join(map(repr, unknown[:5]))}")
        return [self._index[k] for k in history]

    @torch.inference_mode()
    def recommend(self, history: list[str], k: int = 10, exclude_history: bool = True,
                  beam_size: int | None = None) -> list[Recommendation]:
        """Top-``k`` items after ``history`` (item keys, oldest first), best first."""
        if not history:
            raise ValueError("history is empty")
        if k < 1 or k > self.dataset.num_items:
            raise ValueError(f"k must be in 1..{self.dataset.num_items}")
        idx = self.item_indices(history)
        seen = set(idx) if exclude_history else set()
        # Widen the beam so that removing history items still leaves k results.
        beam = max(beam_size or 20, k + len(seen))
        beam = min(beam, self.dataset.num_items)
        hist = np.full(self.max_history, -1, dtype=np.int64)
        tail = idx[-self.max_history :]
        hist[self.max_history - len(tail) :] = tail
        hist_t = torch.as_tensor(hist, device=self.device)[None]
        users = torch.zeros(1, dtype=torch.long, device=self.device)
        ids, mask = model_inputs(self.model, self.item_sids, hist_t, users)
        res = constrained_beam_search(self.model, ids, mask, self.trie, beam_size=beam, topk=beam)
        out = []
        for item, score, sid in zip(res.items[0].tolist(), res.scores[0].tolist(), res.sids[0].tolist()):
            if item < 0 or item in seen:
                continue
            out.append(Recommendation(self.dataset.item_keys[item], self.dataset.title(item), score, sid))
            if len(out) == k:
                break
        return out
