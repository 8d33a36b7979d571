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
from sidrec.models.registry import load_recommender
from sidrec.pipeline import check_model
from sidrec.rundir import RunDir
from sidrec.tokenizers import load_sids
from sidrec.utils import bf16_autocast, resolve_device


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

    def __init__(self, dataset: Dataset, model, item_sids: np.ndarray, level_sizes: list[int], device="cpu",
                 bf16: bool = False):
        self.dataset = dataset
        self.device = torch.device(device)
        self.bf16 = bf16_autocast(self.device, bf16)  # asked for and fast here (CUDA, or a CPU with native bf16: AMX or AVX512-BF16)
        self.model = model.to(self.device).eval()
        self.item_sids = torch.as_tensor(item_sids, device=self.device)
        self.trie = SidTrie(self.item_sids, level_sizes).to(self.device)
        self.max_history = model.cfg.max_history
        self._index = dataset.item_index()

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str = "auto", bf16: bool = False,
                 allow_stale: bool = False) -> Recommender:
        """Load a finished run.

        Args:
            run_dir: a directory written by ``sidrec run``.
            device: ``"auto"`` (GPU if available), ``"cpu"`` or ``"cuda"``.
            bf16: decode under bf16 autocast where it is fast (fp32 by default: with serving's small batches
                bf16 gained nothing on the demo model; docs/benchmarks.md).
            allow_stale: load a ``model/`` that an earlier stage has re-run under (``sidrec.pipeline.stale_model``)
                with a warning; by default that is a ``StaleRunError``.
        """
        run = RunDir(run_dir)
        for need in (run.data / "dataset.json", run.sids_file(run.sids_dir), run.model_json):
            if not need.exists():
                raise FileNotFoundError(f"{need}: missing; is {run.root} a finished run directory?")
        check_model(run.root, allow_stale)
        sids, _ = load_sids(run.sids_dir)
        model = load_recommender(run.model)  # its level sizes: a joint run widens the dedup level
        return cls(Dataset.load(run.data), model, sids, model.cfg.level_sizes, str(resolve_device(device)), bf16)

    def unknown_items(self, keys: list[str]) -> list[str]:
        """The keys in ``keys`` that are not in the catalogue, in order, without duplicates."""
        return list(dict.fromkeys(k for k in keys if k not in self._index))

    def key_examples(self) -> str:
        """What a valid item key looks like, for error messages: the first three keys and the catalogue size."""
        keys = self.dataset.item_keys
        return f"item keys look like {', '.join(map(repr, keys[:3]))} ({len(keys)} items)"

    def item_indices(self, history: list[str]) -> list[int]:
        unknown = self.unknown_items(history)
        if unknown:
            raise KeyError(f"unknown item key(s): {', '.join(repr(k[:100]) for k in unknown[:5])}; "
                           f"{self.key_examples()}")
        return [self._index[k] for k in history]

    def info(self) -> dict:
        """What is being served: catalogue size, SID shape and model sizes (JSON-serialisable)."""
        cfg = self.model.cfg
        return {
            "dataset": self.dataset.name,
            "items": self.dataset.num_items,
            "sid_levels": list(self.trie.level_sizes),
            "max_history": self.max_history,
            "parameters": self.model.num_parameters(),
            "d_model": cfg.d_model,
            "layers": [cfg.num_encoder_layers, cfg.num_decoder_layers],
            "device": str(self.device),
            "bf16": self.bf16,
        }

    def recommend(self, history: list[str], k: int = 10, exclude_history: bool = True,
                  beam_size: int | None = None) -> list[Recommendation]:
        """Top-``k`` items after ``history`` (item keys, oldest first), best first.

        Args:
            history: item keys as in the dataset, oldest first; only the last ``max_history`` are encoded.
            k: number of items returned, 1..num_items.
            exclude_history: drop items that are already in ``history``.
            beam_size: beams kept by the search (default 20), widened to ``k`` plus the excluded items.

        Example:
            >>> rec.recommend(["i3", "i4"], k=2)  # doctest: +SKIP
            [Recommendation(item='i5', title='Movie 5', score=-0.41, sid=[3, 6]), ...]
        """
        return self.recommend_batch([history], k, exclude_history, beam_size)[0]

    @torch.inference_mode()
    def recommend_batch(self, histories: list[list[str]], k: int | list[int] = 10,
                        exclude_history: bool | list[bool] = True,
                        beam_size: int | None = None) -> list[list[Recommendation]]:
        """``recommend`` for many histories with one batched beam search.

        The whole batch shares one beam width, the widest any history needs (``k`` plus its excluded items),
        so a history decoded next to longer ones can only get a wider, never a narrower, search than alone.

        Args:
            histories: one list of item keys per request, oldest first.
            k: items per request, one int for all or one per history.
            exclude_history: one bool for all or one per history.
            beam_size: minimum beam width (default 20).

        Returns:
            One best-first list of Recommendation per history.

        Example:
            >>> [len(r) for r in rec.recommend_batch([["i3"], ["i4", "i5"]], k=[3, 5])]  # doctest: +SKIP
            [3, 5]
        """
        n = len(histories)
        ks = list(k) if isinstance(k, (list, tuple)) else [k] * n
        excludes = list(exclude_history) if isinstance(exclude_history, (list, tuple)) else [exclude_history] * n
        if len(ks) != n or len(excludes) != n:
            raise ValueError(f"k and exclude_history must be one value or one per history ({n})")
        if n == 0:
            return []
        num_items = self.dataset.num_items
        hist = np.full((n, self.max_history), -1, dtype=np.int64)  # (B, H) left-padded with -1
        seen = []
        for row, (history, k_row, exclude) in enumerate(zip(histories, ks, excludes)):
            if not history:
                raise ValueError(f"history {row} is empty")
            if k_row < 1 or k_row > num_items:
                raise ValueError(f"k must be in 1..{num_items}, got {k_row} for history {row}")
            idx = self.item_indices(history)
            seen.append(set(idx) if exclude else set())
            tail = idx[-self.max_history :]
            hist[row, self.max_history - len(tail) :] = tail
        # Widen the beam so that removing history items still leaves k results for every row.
        beam = max(beam_size or 20, *(k_row + len(s) for k_row, s in zip(ks, seen)))
        beam = min(beam, num_items)
        hist_t = torch.as_tensor(hist, device=self.device)
        users = torch.zeros(n, dtype=torch.long, device=self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            ids, mask = model_inputs(self.model, self.item_sids, hist_t, users)
            res = constrained_beam_search(self.model, ids, mask, self.trie, beam_size=beam, topk=beam)
        items, scores, sids = res.items.tolist(), res.scores.tolist(), res.sids.tolist()  # (B, beam[, Lc])
        out = []
        for row in range(n):
            recs = []
            for item, score, sid in zip(items[row], scores[row], sids[row]):
                if item < 0 or item in seen[row]:
                    continue
                recs.append(Recommendation(self.dataset.item_keys[item], self.dataset.title(item), score, sid))
                if len(recs) == ks[row]:
                    break
            out.append(recs)
        return out
