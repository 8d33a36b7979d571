"""The ``sidrec`` command line: one subcommand per stage, plus ``run`` for all of them.

    sidrec run configs/movielens-100k.yaml train.epochs=5 run_dir=runs/quick
    sidrec evaluate runs/quick
    sidrec recommend runs/quick --history 50 172 181 -k 10
    sidrec serve runs/quick --port 8000
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from sidrec.config import ConfigError, load_config
from sidrec.training.checkpoint import CheckpointError

STAGE_HELP = {
    "prepare": "load and validate the dataset into the run directory",
    "embed": "prepare, then compute (or reuse cached) item embeddings",
    "tokenize": "embed, then fit the tokenizer and assign unique semantic IDs",
    "train": "tokenize, then train the recommender (resumes from the last checkpoint)",
    "run": "all stages: prepare, embed, tokenize, train, evaluate; prints the results table",
    "baseline": "prepare, then train and evaluate the SASRec baseline (full ranking); prints its metrics",
}


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML preset, e.g. configs/movielens-100k.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=5 seed=1")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true",
                       help="continue from the newest intact checkpoint (the default; a damaged one is skipped)")
    start.add_argument("--fresh", action="store_true", help="ignore existing recommender checkpoints")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="stop training after this long (checkpointed); run the same command again to resume")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sidrec", description="Generative recommendation with semantic IDs.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in STAGE_HELP.items():
        _add_config_args(sub.add_parser(name, help=help_text, description=help_text))
    ev = sub.add_parser("evaluate", help="(re)compute test/validation metrics of a trained run",
                        description="Evaluate a trained run directory and print the results table.")
    ev.add_argument("run_dir")
    ev.add_argument("--quiet", action="store_true")
    rec = sub.add_parser("recommend", help="recommend items after a history of item keys",
                         description="Top-k items (with titles) after a history of item keys, oldest first.")
    rec.add_argument("run_dir")
    rec.add_argument("--history", nargs="+", required=True, help="item keys as in the dataset, oldest first")
    rec.add_argument("-k", type=int, default=10)
    rec.add_argument("--include-history", action="store_true", help="allow items already in the history")
    rec.add_argument("--json", action="store_true", help="print JSON instead of a table")
    srv = sub.add_parser("serve", help="serve recommendations over HTTP (needs the 'serve' extra)",
                         description="Serve a trained run over HTTP: POST /recommend, POST /recommend/batch, "
                                     "GET /items/{key}, GET /health. A host other than loopback needs an API key.")
    srv.add_argument("run_dir")
    srv.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--api-key-env", metavar="NAME",
                     help="environment variable holding the key that clients must send as X-API-Key")
    return parser


def _stage(args: argparse.Namespace) -> int:
    from sidrec.data.splits import leave_one_out
    from sidrec.pipeline import Run, results_table

    cfg = load_config(args.config, args.overrides)
    run = Run(cfg, progress=not args.quiet, log=(lambda *_: None) if args.quiet else print)
    resume = not args.fresh
    deadline = time.time() + args.time_budget if args.time_budget else None
    if args.command == "run":
        metrics = run.run_all(resume=resume, deadline=deadline)
        if metrics is None:
            print(f"time budget reached; run the same command again to resume from {run.dir}")
            return 3
        print(results_table(metrics, cfg.eval.ks))
        print(f"\nrun directory: {run.dir}  (metrics.json, config.yaml, model/)")
        return 0
    ds = run.stage_prepare()
    if args.command == "prepare":
        print(json.dumps(ds.stats()))
        return 0
    if args.command == "baseline":
        print(json.dumps(run.stage_sasrec(ds, resume=resume), indent=2))
        print(f"\nrun directory: {run.dir}  (sasrec/metrics.json, sasrec/model/)")
        return 0
    emb = run.stage_embed(ds)
    if args.command == "embed":
        print(f"embeddings: {emb.shape[0]} items x {emb.shape[1]} dims")
        return 0
    sids, sizes = run.stage_tokenize(emb)
    if args.command == "tokenize":
        print(f"semantic IDs: {sids.shape[0]} items x {sids.shape[1]} tokens, level sizes {sizes}")
        return 0
    model = run.stage_train(leave_one_out(ds, cfg.data.max_history), sids, sizes, resume=resume, deadline=deadline)
    return 0 if model is not None else 3


def _evaluate(args: argparse.Namespace) -> int:
    from sidrec.data.dataset import Dataset
    from sidrec.data.splits import leave_one_out
    from sidrec.models.tiger import load_model
    from sidrec.pipeline import Run, load_sids, results_table

    run = Run.open(args.run_dir, progress=not args.quiet, log=(lambda *_: None) if args.quiet else print)
    ds = Dataset.load(run.dir / "data")
    sids, sizes = load_sids(run.dir / "tokenizer")
    model = load_model(run.dir / "model").to(run.device)
    metrics = run.stage_evaluate(ds, leave_one_out(ds, run.cfg.data.max_history), model, sids, sizes)
    print(results_table(metrics, run.cfg.eval.ks))
    return 0


def _recommend(args: argparse.Namespace) -> int:
    from sidrec.serve.recommender import Recommender

    rec = Recommender.from_run(args.run_dir)
    recs = rec.recommend(args.history, k=args.k, exclude_history=not args.include_history)
    if args.json:
        print(json.dumps([r.__dict__ for r in recs], indent=2))
    else:
        for rank, r in enumerate(recs, 1):
            print(f"{rank:3d}. {r.item:<14} {r.score:9.4f}  {r.title}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        from sidrec.serve.app import serve
    except ImportError as e:
        raise ValueError(f"{e}; install the server with: pip install 'sidrec[serve]'") from e
    serve(args.run_dir, host=args.host, port=args.port, api_key_env=args.api_key_env)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "recommend":
            return _recommend(args)
        if args.command == "serve":
            return _serve(args)
        return _stage(args)
    except (ConfigError, ValueError, FileNotFoundError, KeyError, CheckpointError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"sidrec {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
