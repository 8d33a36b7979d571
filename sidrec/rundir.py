"""The layout of a run directory: ``RunDir`` is the only place that knows a path inside a run.

    config.yaml          the resolved RunConfig          run.json       seed, versions, git commit, threads of the
                                                                        last process that ran a stage
    stages.json          a record per finished stage: its key, a hash of what the stage read
                         (``sidrec.pipeline.Run.keys``), and its provenance (commit, versions, device, threads,
                         processes, precision, finish time); a record flagged ``"stale": STAGE`` was made before
                         STAGE re-ran with other results (``sidrec.pipeline.stale_model``)
    data/                the prepared Dataset
    tokenizer/           the tokenize stage's output: weights, tokenizer.json, sids.npy, health.json, fit_log.jsonl
    recommender/         the recommender's training (``TrainingDir``): key, checkpoints/, best/, metrics.jsonl (a
                         "step" record every train.log_every steps and an "epoch" record per epoch with valid.*
                         metrics, see sidrec.training.metrics_log)
    tensorboard/         TensorBoard event files of that training (only with train.tensorboard=true)
    model/               model.safetensors + model.json (the selected recommender); after a schedule that trains
                         the tokenizer also model/tokenizer/, the selected epoch's tokenizer with its sids.npy and
                         health.json: the SIDs this model reads (``RunDir.sids_dir``)
    metrics.json         valid.* / test.* metrics, and popularity.* / transition.* baselines
    sasrec/              the SASRec baseline (``sidrec baseline``, a ``BaselineDir``): key, train/ (checkpoints/,
                         best/), model/, metrics.json (sasrec.*), metrics.jsonl (its training log)
    inspect/             ``sidrec inspect``: health.json and PNG plots
    report.html          the self-contained HTML report (``sidrec report``)

A tokenizer folder (``tokenizer/``, ``model/tokenizer/``) holds what ``sidrec.tokenizers.load_tokenizer`` and
``load_sids`` read, plus ``health.json``.
"""

from __future__ import annotations

from pathlib import Path

SIDS_FILE = "sids.npy"  # in a tokenizer folder: (N, Lc) int64, one SID per item
HEALTH_FILE = "health.json"  # in a tokenizer folder: codebook_health of the SIDs


class TrainingDir:
    """The output folder of one training: ``checkpoints/``, ``best/`` (the selected epoch) and its log.

    Example:
        >>> TrainingDir("runs/demo/recommender").best_model.as_posix()
        'runs/demo/recommender/best/model.safetensors'
    """

    def __init__(self, root: str | Path, log: str | Path | None = None):
        self.root = Path(root)
        self.log = Path(log) if log is not None else self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def best(self) -> Path:
        return self.root / "best"

    @property
    def best_model(self) -> Path:
        return self.best / "model.safetensors"

    @property
    def best_json(self) -> Path:
        """``{"epoch", "valid"}`` of the selected epoch."""
        return self.best / "best.json"

    @property
    def best_tokenizer(self) -> Path:
        """The selected epoch's tokenizer, when the training trains one."""
        return self.best / "tokenizer"

    @property
    def key(self) -> Path:
        """The hash of the settings this folder's checkpoints were trained under (they resume only under it)."""
        return self.root / "key"


class BaselineDir:
    """The SASRec baseline's folder (a run's ``sasrec/``): ``key``, ``train/`` (a ``TrainingDir`` whose log is
    ``metrics.jsonl`` here), ``model/`` and ``metrics.json`` (``sasrec.*`` metrics)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    key = property(lambda self: self.root / "key")
    model = property(lambda self: self.root / "model")
    metrics = property(lambda self: self.root / "metrics.json")
    training = property(lambda self: TrainingDir(self.root / "train", log=self.root / "metrics.jsonl"))


class RunDir:
    """The paths of a run directory (see the module docstring); it reads and writes nothing itself.

    Example:
        >>> run = RunDir("runs/demo")
        >>> run.tokenizer.as_posix(), run.recommender.best_json.as_posix()
        ('runs/demo/tokenizer', 'runs/demo/recommender/best/best.json')
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    config = property(lambda self: self.root / "config.yaml")
    run_json = property(lambda self: self.root / "run.json")
    stages = property(lambda self: self.root / "stages.json")
    data = property(lambda self: self.root / "data")
    tokenizer = property(lambda self: self.root / "tokenizer", doc="the tokenize stage's output")
    fit_log = property(lambda self: self.tokenizer / "fit_log.jsonl")
    tensorboard = property(lambda self: self.root / "tensorboard")
    model = property(lambda self: self.root / "model")
    model_json = property(lambda self: self.model / "model.json")
    model_tokenizer = property(lambda self: self.model / "tokenizer", doc="a schedule's trained tokenizer and SIDs")
    metrics = property(lambda self: self.root / "metrics.json")
    sasrec = property(lambda self: BaselineDir(self.root / "sasrec"))
    inspect = property(lambda self: self.root / "inspect")
    report = property(lambda self: self.root / "report.html")

    @property
    def recommender(self) -> TrainingDir:
        return TrainingDir(self.root / "recommender")

    @property
    def sids_dir(self) -> Path:
        """The tokenizer folder with the SIDs the selected model reads: ``model/tokenizer/`` after a schedule that
        trained the tokenizer, else ``tokenizer/``."""
        return self.model_tokenizer if (self.model_tokenizer / SIDS_FILE).is_file() else self.tokenizer

    @staticmethod
    def sids_file(tokenizer_dir: Path) -> Path:
        return tokenizer_dir / SIDS_FILE

    @staticmethod
    def health_file(tokenizer_dir: Path) -> Path:
        return tokenizer_dir / HEALTH_FILE
