"""The stages of a run (prepare -> embed -> tokenize -> train -> evaluate), each cached in the run directory.

The run directory's layout is ``sidrec.rundir.RunDir``. Schedules that train the tokenizer (``schedule.name``
alternating or joint, see ``sidrec.training.schedules``) start from the tokenize stage's tokenizer in ``tokenizer/``,
which they leave as it is, and write the tokenizer of the selected epoch with its SIDs to ``model/tokenizer/``,
beside the model that reads them.

Under torchrun (``sidrec run CONFIG --nproc N``) only rank 0 writes: it prepares, embeds and tokenizes while the
other processes wait and then read its results; all processes train (DDP) and evaluate (users split).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from sidrec import distributed as dist
from sidrec.config import ConfigError, RunConfig, dump_config, input_path, load_config, resolve_embed
from sidrec.data.dataset import Dataset
from sidrec.data.loaders import load_dataset, needs_path
from sidrec.data.splits import LeaveOneOut, leave_one_out
from sidrec.decoding.trie import SidTrie
from sidrec.embeddings import EmbedConfig, embed_items, embedding_key
from sidrec.eval.evaluate import exact_evaluation, generate_rankings
from sidrec.eval.hybrid import TransitionTable, mix_rankings, select_lambda
from sidrec.eval.locality import misalignment, prefix_sharing
from sidrec.eval.metrics import baseline_metrics, topk_metrics
from sidrec.models.registry import load_recommender, recommender_spec
from sidrec.models.tiger import Tiger, save_model
from sidrec.rundir import RunDir
from sidrec.schema import from_dict
from sidrec.tokenizers import Tokenizer, build_tokenizer, load_sids, load_tokenizer
from sidrec.tokenizers.base import CONFIG_FILE, WEIGHTS_FILE, codebook_health
from sidrec.tokenizers.index import IMPORTED, ImportedConfig, import_sids
from sidrec.training.loop import TrainResult
from sidrec.training.sasrec import sasrec_baseline
from sidrec.training.schedules import train_joint
from sidrec.training.two_stage import train_recommender
from sidrec.utils import (
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    bf16_autocast,
    read_json,
    remove_stale_temps,
    resolve_device,
    run_metadata,
    save_npy,
    sha256_file,
)
from sidrec.utils import seed_everything as seed_all

STAGES = ("prepare", "embed", "tokenize", "train", "evaluate")
# Train settings that change what is logged or how fast, not the model (torch.compile is tested equal to eager):
# left out of the train stage's cache key.
NOT_IN_KEY = ("log_every", "tensorboard", "compile")
# Collisions warned about (our thresholds): above 10% of the items, or a group larger than 16 items, the meaningless
# dedup token decides a sizeable part of the ranking (docs/results.md gives the presets' rates).
COLLISION_RATE_WARN = 0.10
COLLISION_GROUP_WARN = 16


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Run:
    """A run directory and its config; each ``stage_*`` method is idempotent and cached.

    Example:
        >>> run = Run(load_config("movielens-100k", ["run_dir=runs/demo"]))  # doctest: +SKIP
        >>> run.run_all()  # doctest: +SKIP
    """

    def __init__(self, cfg: RunConfig, progress: bool = True, log=print, fresh: bool = False,
                 _opened: bool = False):
        self.cfg = cfg
        self.run = RunDir(cfg.run_dir)
        self.dir = self.run.root
        self.cache = Path(cfg.cache_dir)
        self.progress = progress
        self.log = log
        self.fresh = fresh  # every stage re-runs once in this process: cached results are not reused
        self._redone: set[str] = set()
        self.device = dist.init_from_env(resolve_device(cfg.train.device))  # cuda:LOCAL_RANK under torchrun
        # An opened run keeps the config.yaml it was read from and the run.json of the process that trained it.
        self._config_written = _opened
        if not dist.is_main() or _opened:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.dir, recursive=True)  # unfinished atomic writes of a killed earlier attempt
        existing = self.run.config
        if self._records() and existing.exists() and existing.read_text() != dump_config(cfg):
            self.log(f"note: {existing} differs from this config; changed stages will re-run")

    def _write_config(self) -> None:
        """config.yaml and run.json, when this process first finishes a stage: a failed first stage leaves neither
        behind, and a re-invocation in which every stage was cached rewrites neither."""
        if not self._config_written:
            atomic_write_text(self.run.config, dump_config(self.cfg))
            atomic_write_json(self.run.run_json, run_metadata(self.cfg.seed))
            self._config_written = True

    @classmethod
    def open(cls, run_dir: str | Path, progress: bool = True, log=print) -> Run:
        """Re-open an existing run directory with its saved config, wherever the directory now is.

        Opening writes nothing: ``config.yaml`` and ``run.json`` stay those of the training run; only a stage run
        afterwards (``stage_evaluate``) writes its own results.
        """
        cfg = load_config(RunDir(run_dir).config)
        return cls(replace(cfg, run_dir=str(run_dir)), progress=progress, log=log, _opened=True)

    @staticmethod
    def warn(message: str) -> None:
        """A problem with the results: on stderr even when ``log`` is silenced (``--quiet`` hides progress only)."""
        print(f"warning: {message}", file=sys.stderr)

    # -- stage bookkeeping ------------------------------------------------------------------------------------
    def _records(self) -> dict[str, dict[str, Any]]:
        """stages.json: ``{stage: record}`` (see ``_mark``)."""
        return read_records(self.run.stages)

    def _current_key(self, stage: str) -> str | None:
        """The key ``stage`` was last done under, or None if it was not, or an earlier stage re-ran since."""
        rec = self._records().get(stage)
        return None if rec is None or "stale" in rec else rec["key"]

    def _done(self, stage: str, key: str) -> bool:
        if self.fresh and stage not in self._redone:
            return False
        return self._current_key(stage) == key

    def _mark(self, stage: str, key: str, drop_later: bool = True) -> None:
        """Record ``stage`` as done under ``key``, with the provenance of this process (commit, versions, device,
        threads, precision); ``drop_later``: the later stages' results are now stale.

        A stale record stays, flagged ``"stale": <the stage that re-ran>``: it is never reused as a cache hit, and
        readers of ``model/`` (``stale_model``) name the stage that changed under it.
        """
        self._write_config()
        records = self._records()
        rec: dict[str, Any] = {"key": key, "provenance": self._provenance(stage)}
        before = records.get(STAGES[STAGES.index(stage) - 1]) if stage != STAGES[0] else None
        if before is not None and "stale" in before:  # e.g. evaluate --allow-stale of a stale model
            rec["stale"] = before["stale"]
        records[stage] = rec
        if drop_later:
            for later in STAGES[STAGES.index(stage) + 1 :]:
                if later in records:
                    records[later].setdefault("stale", stage)  # the first stage that changed is the cause
        atomic_write_json(self.run.stages, records)
        self._redone.add(stage)

    def _provenance(self, stage: str) -> dict[str, Any]:
        """Where and how ``stage`` ran: ``run_metadata`` (seed, versions, git commit, device, CPU threads), the
        number of processes, the float precision, and when it finished (UTC)."""
        meta = run_metadata(self.cfg.seed)
        meta["processes"] = dist.world_size()
        bf16 = {"train": self.cfg.train.bf16, "evaluate": self.cfg.eval.bf16}.get(stage, False)
        meta["precision"] = "bf16 autocast" if bf16_autocast(self.device, bf16) else "fp32"
        meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return meta

    def data_path(self, check: bool = False) -> Path | None:
        """``data.path`` resolved by ``input_path`` (None: MovieLens-100K from PyPI); ``check``: it must exist."""
        d = self.cfg.data
        if d.path is None:
            if not needs_path(d.format):
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
        from_dict(ImportedConfig, params, "tokenizer.params")  # wrong keys or values, named first
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
             "embed": self._current_key("embed") or ""}
        k["tokenize"] = _tokenize_key(c, k["embed"])
        k["train"] = _train_key(c, k["tokenize"])
        ev = asdict(c.eval)
        if not ev["exact"]:  # keys of runs made before eval.exact existed stay valid
            del ev["exact"], ev["exact_users"]
        k["evaluate"] = _key(k["train"], ev)
        return k

    # -- stages -----------------------------------------------------------------------------------------------
    def stage_prepare(self) -> Dataset:
        key = self.keys()["prepare"]
        if self._done("prepare", key):
            ds = Dataset.load(self.run.data)
            self.cfg.check_dataset(ds.num_items, ds.name)
            return ds
        d = self.cfg.data
        path = self.data_path(check=True)
        ds = load_dataset(d.format, path, cache_dir=self.cache / "downloads", **d.options)
        ds.name = d.name
        self.cfg.check_dataset(ds.num_items, ds.name)  # before anything is written or computed
        meta = self.run.data / "dataset.json"  # the Dataset folder's own format
        before = read_json(meta).get("digest") if meta.exists() else None
        ds.save(self.run.data)
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
        tdir = self.run.tokenizer
        if self.cfg.tokenizer.name == IMPORTED:
            return self._import_sids(tdir, key, emb)
        # Run directories of versions before model/tokenizer/: a joint run rewrote tokenizer/ (keeping the fit in
        # tokenizer/pretrained/), so tokenizer/ is not the tokenize stage's output; fit again.
        rewritten = (tdir / "pretrained").is_dir()
        if rewritten or not self._done("tokenize", key):
            seed_all(self.cfg.seed)
            tok = build_tokenizer(self.cfg.tokenizer.name, self.cfg.tokenizer.params, emb.shape[1])
            x = torch.as_tensor(emb, dtype=torch.float32)
            shutil.rmtree(tdir / "pretrained", ignore_errors=True)
            extra = {}
            if self.cfg.tokenizer.collab is not None:  # collaborative embeddings for fit(collab=...), cached
                if not tok.uses_collab:
                    self.log(f"note: tokenizer {tok.name} does not use tokenizer.collab")
                extra["collab"] = self._collab_embeddings(Dataset.load(self.run.data))
            tdir.mkdir(parents=True, exist_ok=True)
            with open(self.run.fit_log, "w", encoding="utf-8") as f:  # per-epoch loss + codebook health
                tok.fit(x, seed=self.cfg.seed, device=self.device, progress=self.progress,
                        log=lambda rec: f.write(json.dumps(rec) + "\n"), **extra)
            health = self._save_tokenizer(tok, x, tdir)
            self._mark("tokenize", key)
            self.log(f"tokenizer {tok.name}: collision rate {health['collision_rate']:.4f}, max group "
                     f"{health['max_group']}, usage per level {[round(u, 3) for u in health['usage']]}")
            self._check_collisions(health)
        return load_sids(tdir)

    def _import_sids(self, tdir: Path, key: str, emb: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """``tokenizer.name: imported``: SIDs from another tool's index file; nothing is fitted.

        Cached like a fit, and also re-imported when the file's content changed (its path stayed the same).
        A file whose keys do not match the items (shuffled, or made for another dataset) passes every format
        check, so the import also compares how often nearest neighbours in ``emb`` share code prefixes with
        how often random pairs do, records it in ``tokenizer.json`` and warns when the two are close.
        """
        params = self.imported_params()
        if self._done("tokenize", key) and read_json(tdir / CONFIG_FILE)["source"]["sha256"] == sha256_file(
            params["path"]
        ):
            return load_sids(tdir)
        imp = import_sids(params, Dataset.load(self.run.data))
        codes = torch.as_tensor(imp.sids[:, : imp.meta["num_levels"]])
        sharing = prefix_sharing(codes, torch.as_tensor(emb), num_samples=2000, seed=self.cfg.seed)
        imp.meta["prefix_sharing"] = sharing
        tdir.mkdir(parents=True, exist_ok=True)
        for stale in (tdir / WEIGHTS_FILE, self.run.fit_log):  # left by a tokenizer fitted here before
            stale.unlink(missing_ok=True)
        atomic_write_json(tdir / CONFIG_FILE, imp.meta)
        atomic_write(RunDir.sids_file(tdir), lambda p: save_npy(p, imp.sids))
        atomic_write_json(RunDir.health_file(tdir), imp.health)
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

    @staticmethod
    def _save_tokenizer(tok: Tokenizer, x: torch.Tensor, tdir: Path, sids: np.ndarray | None = None) -> dict[str, Any]:
        """Write the tokenizer folder ``tdir`` (weights, SIDs, their health); returns the health.

        ``sids``: the table to save (a joint schedule's best epoch trained and validated on it); default the
        tokenizer's ``semantic_ids`` of the items ``x``, the one function every SID table comes from.
        """
        tok.save(tdir)
        if sids is None:
            sids = tok.semantic_ids(x.to(tok.device)).cpu().numpy()
        health = codebook_health(torch.as_tensor(sids[:, :-1]), tok.codebook_size)
        health["input_scale"] = tok.input_scale(x)  # row norms of the inputs (and LETTER's collaborative rows)
        atomic_write(RunDir.sids_file(tdir), lambda p: save_npy(p, sids))
        atomic_write_json(RunDir.health_file(tdir), health)
        return health

    def _new_model(self, level_sizes: list[int], max_history: int) -> Tiger:
        """The recommender of ``model`` (``sidrec.models.registry``); its alignment heads are sized from the
        tokenizer (latent space, input dimension)."""
        name, losses = self.cfg.model.name, self.cfg.schedule.losses
        spec = recommender_spec(name)
        tok_meta = read_json(self.run.tokenizer / CONFIG_FILE)
        latent_dim = tok_meta["config"].get("latent_dim")
        needs_latent = spec.latent or losses.sia is not None or (
            losses.soda is not None and losses.soda.user_source == "latent")
        if needs_latent and latent_dim is None:
            raise ValueError(f"tokenizer.name: {tok_meta['name']} has no latent space, which model.name {name} "
                             "and the sia / soda latent losses need (use rqvae, letter or diger)")
        sizes = {"level_sizes": level_sizes, "max_history": max_history, "latent_dim": latent_dim if needs_latent else 0}
        if "input_dim" in tok_meta:  # a fitted tokenizer's input space (imported SIDs have none)
            sizes["recon_dim"] = tok_meta["input_dim"]
        cfg = self.cfg.model.model_config(**sizes)
        return spec.model(cfg)

    def stage_train(self, split: LeaveOneOut, sids: np.ndarray, level_sizes: list[int], resume: bool = True,
                    deadline: float | None = None):
        """Train (or resume) the recommender; returns the selected model, or None if ``deadline`` cut it short."""
        key = self.keys()["train"]
        if self._done("train", key):
            return load_recommender(self.run.model, self.device)
        resume = resume and not self.fresh
        seed_all(self.cfg.seed)
        if not self.cfg.schedule.plain:
            return self._train_joint(split, level_sizes, key, resume, deadline)
        model = self._new_model(level_sizes, split.max_history).to(self.device)
        self.log(f"{self.cfg.model.name}: {model.num_parameters() / 1e6:.2f}M parameters, levels {level_sizes}")
        item_sids = torch.as_tensor(sids, device=self.device)
        trie = SidTrie(item_sids, level_sizes).to(self.device)
        if dist.is_main():
            self._recommender_dir(key, resume)
        dist.barrier()
        res = train_recommender(model, split, item_sids, trie, self.cfg.train, self.run.recommender.root,
                                self.cfg.seed, resume=resume, progress=self.progress, log=self._epoch_line,
                                deadline=deadline, tensorboard_dir=self.run.tensorboard)
        if not self._keep_best(res, model):
            return None
        if dist.is_main():
            self._mark("train", key)
        self.log(f"best epoch {res.best_epoch}: valid {res.best_valid}")
        return model

    def _keep_best(self, res: TrainResult, model: torch.nn.Module) -> bool:
        """After training: False if the time budget stopped it, else load the selected epoch's weights into
        ``model`` and (rank 0) save them as ``model/``, replacing the earlier model with what it held."""
        if not res.finished:
            self.log(f"time budget reached after {res.epochs_run} epochs; run again to resume")
            return False
        model.load_state_dict(load_file(str(self.run.recommender.best_model)))
        if dist.is_main():
            shutil.rmtree(self.run.model, ignore_errors=True)  # e.g. model/tokenizer/ of an earlier joint run
            save_model(model, self.run.model)
        return True

    def _recommender_dir(self, key: str, resume: bool) -> Path:
        """``recommender/`` for training under ``key``; checkpoints of another training config (or of any config
        when ``resume`` is off) are removed first, with their TensorBoard events, so they are never resumed."""
        rdir = self.run.recommender
        if rdir.root.exists() and (not resume or not rdir.key.exists() or rdir.key.read_text() != key):
            shutil.rmtree(rdir.root)
            shutil.rmtree(self.run.tensorboard, ignore_errors=True)
        atomic_write_text(rdir.key, key)
        return rdir.root

    def _train_joint(self, split: LeaveOneOut, level_sizes: list[int], key: str, resume: bool,
                     deadline: float | None):
        """stage_train for schedules other than plain two-stage (``sidrec.training.schedules.train_joint``)."""
        sched = self.cfg.schedule
        if dist.is_main():
            self._recommender_dir(key, resume)
        dist.barrier()
        rdir = self.run.recommender
        tok = load_tokenizer(self.run.tokenizer)  # the tokenize stage's fit, left as it is
        ds = Dataset.load(self.run.data)
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
        res = train_joint(model, tok, x, split, self.cfg.train, sched, rdir.root, self.cfg.seed, resume=resume,
                          progress=self.progress, log=self._epoch_line, deadline=deadline,
                          tensorboard_dir=self.run.tensorboard)
        if not self._keep_best(res, model):
            return None
        if dist.is_main():  # the selected epoch's tokenizer and SIDs, beside the model that reads them
            best_tok = rdir.best_tokenizer
            health = self._save_tokenizer(load_tokenizer(best_tok).to(self.device), x, self.run.model_tokenizer,
                                          np.load(RunDir.sids_file(best_tok), allow_pickle=False))
            self._mark("train", key)
            self.log(f"best epoch {res.best_epoch}: valid {res.best_valid}; tokenizer usage per level "
                     f"{[round(u, 3) for u in health['usage']]}, collision rate {health['collision_rate']:.4f}")
            self._check_collisions(health)
        dist.barrier()  # the other processes read model/tokenizer/ (the SIDs of the selected tokenizer) next
        return model

    def _epoch_line(self, rec: dict[str, Any]) -> None:
        parts = [f"epoch {rec['epoch']:3d}", f"loss {rec['loss']:.4f}", f"{rec['samples_per_second']:.0f} samples/s"]
        if "phase" in rec:  # joint schedules
            parts.insert(1, f"{rec['phase']:<11}")
        parts += [f"{k} {v:.4f}" for k, v in rec.items() if k.startswith("valid.")]
        self.log("  ".join(parts))

    def stage_evaluate(self, ds: Dataset, split: LeaveOneOut, model, sids: np.ndarray, level_sizes: list[int]):
        key = self.keys()["evaluate"]
        mpath = self.run.metrics
        if self._done("evaluate", key):
            return read_json(mpath)
        e = self.cfg.eval
        item_sids = torch.as_tensor(sids, device=self.device)
        trie = SidTrie(item_sids, model.cfg.level_sizes).to(self.device)  # a joint run's dedup level is wider
        metrics: dict[str, Any] = {}
        lam = None
        for part, ex in (("valid", split.valid), ("test", split.test)):
            if max(e.ks) > e.beam_size:
                raise ValueError(f"largest K ({max(e.ks)}) exceeds the beam size ({e.beam_size})")
            ranked, scores = generate_rankings(model, ex, item_sids, trie, e.beam_size, max(e.ks), e.batch_size,
                                               self.progress, f"evaluate {part}", e.bf16, with_scores=True)
            metrics.update({f"{part}.{k}": v for k, v in topk_metrics(ranked, ex.target, e.ks).items()})
            cut = 2 if part == "valid" else 1
            base = baseline_metrics(ds.sequences, ex.history, ex.target, cut, ds.num_items, e.ks)
            for name, m in base.items():
                metrics.update({f"{name}.{part}.{k}": v for k, v in m.items()})
            if e.transition_mix:
                table = TransitionTable.from_sequences(ds.sequences, cut, ds.num_items)
                last = ex.history[:, -1]
                if lam is None:  # chosen on validation, applied once to test
                    lam = select_lambda(ranked, scores, last, ex.target, table)
                    metrics["hybrid.lambda"] = lam
                mixed = mix_rankings(ranked, scores, last, table, lam, max(e.ks))
                metrics.update({f"hybrid.{part}.{k}": v for k, v in topk_metrics(mixed, ex.target, e.ks).items()})
        if e.exact:
            m = exact_evaluation(model, split.test, item_sids, trie, beam_size=e.beam_size, ks=e.ks,
                                 batch_size=e.batch_size, users=e.exact_users, seed=self.cfg.seed,
                                 progress=self.progress, desc="exact test", bf16=e.bf16)
            metrics.update({f"exact.test.{k}": v for k, v in m.items()})
        metrics["tokenizer.health"] = read_json(RunDir.health_file(self.run.sids_dir))
        metrics["protocol"] = {"split": "leave-one-out", "ranking": "full, trie-constrained beam search",
                               "beam_size": e.beam_size, "max_history": split.max_history}
        if e.exact:
            metrics["protocol"]["exact"] = "every catalogue SID scored by teacher forcing, test users only"
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
        sdir = self.run.sasrec
        same = sdir.key.exists() and sdir.key.read_text() == key
        if same and sdir.metrics.exists():
            return {k: v for k, v in read_json(sdir.metrics).items() if k.startswith("sasrec.")}
        if sdir.root.exists() and (not resume or not same):  # checkpoints of another config must not be resumed
            shutil.rmtree(sdir.root)
        atomic_write_text(sdir.key, key)
        seed_all(c.seed)
        metrics = sasrec_baseline(ds, c.sasrec.model_config(ds.num_items), c.sasrec.train, sdir.root, c.seed,
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
            ds = Dataset.load(self.run.data)
            sids, level_sizes = load_sids(self.run.tokenizer)
        return ds, sids, level_sizes

    def run_all(self, resume: bool = True, deadline: float | None = None) -> dict[str, Any] | None:
        """Every stage in order; None when ``deadline`` interrupted training (resume by calling again)."""
        ds, sids, level_sizes = self.stage_inputs()
        split = leave_one_out(ds, self.cfg.data.max_history)
        model = self.stage_train(split, sids, level_sizes, resume=resume, deadline=deadline)
        if model is None:
            return None
        sids, level_sizes = load_sids(self.run.sids_dir)  # a schedule that trains the tokenizer wrote new ones
        return self.stage_evaluate(ds, split, model, sids, level_sizes)


def _tokenize_key(c: RunConfig, embed_key: str) -> str:
    tok = asdict(c.tokenizer)
    if tok["collab"] is None:  # keys of runs made before tokenizer.collab existed stay valid
        del tok["collab"]
    return _key(embed_key, tok, c.seed)


def _train_key(c: RunConfig, tokenize_key: str) -> str:
    # a plain two-stage run does not depend on the other schedule fields (tokenizer_lr, ...)
    schedule = [] if c.schedule.plain else [asdict(c.schedule)]
    train = {name: v for name, v in asdict(c.train).items() if name not in NOT_IN_KEY}
    return _key(tokenize_key, asdict(c.model), train, c.seed, *schedule)


def read_records(path: Path) -> dict[str, dict[str, Any]]:
    """A stages.json as ``{stage: {"key", "provenance"[, "stale"]}}``; runs made before per-stage records
    stored the key alone (``{stage: key}``), read as ``{"key": key}``."""
    raw = read_json(path) if path.exists() else {}
    return {stage: rec if isinstance(rec, dict) else {"key": rec} for stage, rec in raw.items()}


class StaleRunError(ValueError):
    """``model/`` was trained on inputs that an earlier stage has since replaced (``stale_model``)."""


def stale_model(run_dir: str | Path) -> str | None:
    """Why a run's ``model/`` no longer follows from its earlier stages, or None while it does.

    After, say, ``sidrec prepare`` alone on changed data, ``data/`` holds the new data while ``model/`` and the
    SIDs it reads were made from the old: stages.json flags the train stage stale, naming the stage that re-ran
    (``Run._mark``). Also caught: a config.yaml whose tokenizer or training settings are not those the recorded
    stages ran under (when this version can read it), and runs of earlier versions, which dropped the later stages'
    keys instead of flagging them. Run directories without stages.json (made by hand) are not judged.
    """
    run = RunDir(run_dir)
    if not run.stages.exists():
        return None
    records = read_records(run.stages)
    train = records.get("train")
    if train is None:
        done = [s for s in STAGES if s in records]
        return (f"stages.json records no train stage: the {done[-1]} stage re-ran with other results after the "
                "model was trained" if done else "stages.json records no stage")
    if "stale" in train:
        return f"the {train['stale']} stage re-ran with other results after the model was trained"
    try:
        cfg = load_config(run.config)
    except (ConfigError, FileNotFoundError):  # missing, or written by a version whose keys this one does not read
        return None
    tokenize = _tokenize_key(cfg, records.get("embed", {}).get("key", ""))
    if tokenize != records.get("tokenize", {}).get("key"):
        return "config.yaml's tokenize settings are not those the tokenize stage ran under"
    if _train_key(cfg, tokenize) != train["key"]:
        return "config.yaml's train settings are not those the model was trained under"
    return None


def check_model(run_dir: str | Path, allow_stale: bool = False) -> None:
    """Refuse (``StaleRunError``) to read a stale ``model/`` (``stale_model``); ``allow_stale``: warn instead."""
    reason = stale_model(run_dir)
    if reason is None:
        return
    message = f"{RunDir(run_dir).model} is stale: {reason} (stages.json)"
    if not allow_stale:
        raise StaleRunError(f"{message}; train again (sidrec run or sidrec train with the run's config), or "
                            "pass --allow-stale to use it anyway")
    Run.warn(f"{message}; used anyway (--allow-stale)")


def _file_stats(path: Path | None) -> list[tuple[str, int, int]]:
    """(name, size, mtime) of every file in the folder ``path`` (or of the file ``path``); [] when missing."""
    if path is None or not path.exists():
        return []
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    return [(p.name, st.st_size, st.st_mtime_ns) for p in files if p.is_file() for st in [p.stat()]]




def model_label(cfg: RunConfig) -> str:
    """The results-table name of a run's model, e.g. ``TIGER (rqvae)`` or ``ETEGRec (rqvae, alternating)``."""
    name = recommender_spec(cfg.model.name).label
    parts = [cfg.tokenizer.name] + ([] if cfg.schedule.plain else [cfg.schedule.name])
    return f"{name} ({', '.join(parts)})"


def results_table(metrics: dict[str, Any], ks: list[int], part: str = "test", label: str = "TIGER") -> str:
    """A plain-text table: the model (named ``label``) beside the popularity and last-item transition baselines,
    and, when the run was evaluated with ``eval.exact``, the exact full-catalogue ranking and what the beam missed.

    Runs evaluated before the transition baseline (or MRR) existed show only popularity (only Recall and NDCG).

    Example:
        >>> print(results_table(read_json("runs/demo/metrics.json"), [5, 10], label="TIGER (rqvae)"))  # doctest: +SKIP
    """
    names = ("recall", "ndcg", "mrr") if f"{part}.mrr@{ks[0]}" in metrics else ("recall", "ndcg")
    cols = [f"{m}@{k}" for k in ks for m in names]
    mixed = f"{label} + transition mix"  # eval.transition_mix: its own row, never the model's
    exact = f"exact.{part}."
    width = max(12, len(mixed if f"hybrid.{part}.{cols[0]}" in metrics else label) + 2, len("exact ranking") + 2)
    head = f"{'model':<{width}}" + "".join(f"{c:>11}" for c in cols)
    rows = [head, "-" * len(head)]
    for name, prefix in ((label, f"{part}."), (mixed, f"hybrid.{part}."), ("popularity", f"popularity.{part}."),
                         ("transition", f"transition.{part}."), ("exact ranking", exact)):
        if prefix + cols[0] not in metrics:
            continue
        rows.append(f"{name:<{width}}" + "".join(f"{metrics.get(prefix + c, float('nan')):>11.4f}" for c in cols))
    if exact + "users" in metrics:
        k = 10 if 10 in ks else max(ks)
        beam = metrics.get("protocol", {}).get("beam_size", "")
        rows.append(f"\nexact ranking of {metrics[exact + 'users']} {part} users: beam {beam} missed "
                    f"{metrics[f'{exact}beam_miss@{k}']:.2%} of the exact top-{k} items and "
                    f"{metrics[f'{exact}target_beam_miss@{k}']:.2%} of the targets in the exact top {k}")
    return "\n".join(rows)
