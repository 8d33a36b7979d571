"""The ``sidrec`` command line: one subcommand per stage, plus ``run`` for all of them.

    sidrec presets                      # the shipped presets, one line each
    sidrec run movielens-100k train.epochs=5 run_dir=runs/quick
    sidrec run my-config.yaml           # a YAML file of your own (sidrec presets beauty > my-config.yaml)
    sidrec run beauty --nproc 4         # data-parallel on 4 GPUs (torchrun + DDP)
    sidrec evaluate runs/quick
    sidrec evaluate runs/quick --exact              # + the exact full-catalogue ranking and the beam's misses
    sidrec recommend runs/quick --history 50 172 181 -k 10
    sidrec serve runs/quick --port 8000
    sidrec inspect runs/quick
    sidrec export-sids runs/quick --format parquet -o sids.parquet
    sidrec report runs/quick            # runs/quick/report.html

Every subcommand takes ``--quiet``: no progress bars or per-epoch lines, only the final result (warnings about
the data or the SIDs still go to stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from sidrec.config import ConfigError, load_config
from sidrec.rundir import RunDir
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
    p.add_argument("config", help="a preset name (see `sidrec presets`), e.g. ml-100k-demo, or a YAML file")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=5 seed=1")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true",
                       help="continue from the newest intact checkpoint (the default; a damaged one is skipped)")
    start.add_argument("--fresh", action="store_true",
                       help="re-run every stage from scratch: re-read the data, recompute the embeddings, refit "
                            "the tokenizer, train from the first step (default: reuse what is cached and resume)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="stop training after this long (checkpointed); run the same command again to resume")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sidrec", description="Generative recommendation with semantic IDs.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in STAGE_HELP.items():
        stage = sub.add_parser(name, help=help_text, description=help_text)
        _add_config_args(stage)
        if name in ("train", "run"):
            stage.add_argument("--nproc", type=int, default=1, metavar="N",
                               help="train data-parallel in N processes on this machine (one per GPU) via "
                                    "torchrun; same as: torchrun --standalone --nproc_per_node N -m sidrec ...")
    ev = sub.add_parser("evaluate", help="(re)compute test/validation metrics of a trained run",
                        description="Evaluate a trained run directory and print the results table.")
    ev.add_argument("run_dir")
    ev.add_argument("--exact", action="store_true",
                    help="also rank the whole catalogue exactly for the test users (eval.exact) and report how "
                         "often the beam misses the exact top-K")
    ev.add_argument("--exact-users", type=int, metavar="N",
                    help="with --exact: score N test users drawn at random (eval.exact_users; default: all)")
    ev.add_argument("--quiet", action="store_true")
    _add_allow_stale(ev)
    rec = sub.add_parser("recommend", help="recommend items after a history of item keys",
                         description="Top-k items (with titles) after a history of item keys, oldest first.")
    rec.add_argument("run_dir")
    rec.add_argument("--history", nargs="+", required=True, help="item keys as in the dataset, oldest first")
    rec.add_argument("-k", type=int, default=10)
    rec.add_argument("--include-history", action="store_true", help="allow items already in the history")
    rec.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rec.add_argument("--bf16", action="store_true", help="decode under bf16 autocast (CUDA, or a CPU with native bf16: AMX or AVX512-BF16)")
    rec.add_argument("--quiet", action="store_true", help="accepted for uniformity: recommend prints only its result")
    _add_allow_stale(rec)
    srv = sub.add_parser("serve", help="serve recommendations over HTTP (needs the 'serve' extra)",
                         description="Serve a trained run over HTTP: POST /recommend, POST /recommend/batch, "
                                     "GET /items/{key}, GET /health. A host other than loopback needs an API key.")
    srv.add_argument("run_dir")
    srv.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--api-key-env", metavar="NAME",
                     help="environment variable holding the key that clients must send as X-API-Key")
    srv.add_argument("--bf16", action="store_true", help="decode under bf16 autocast (CUDA, or a CPU with native bf16: AMX or AVX512-BF16)")
    _add_allow_stale(srv)
    _add_interop_parsers(sub)
    srv.add_argument("--quiet", action="store_true", help="log only warnings and errors (no access log)")
    pre = sub.add_parser("presets", help="list the shipped presets (data, tokenizer, model, what each reproduces)",
                         description="The presets that ship with sidrec, one line each; with a name, print that "
                                     "preset's YAML (a starting point for a config of your own).")
    pre.add_argument("name", nargs="?", help="print this preset's YAML")
    pre.add_argument("--quiet", action="store_true", help="accepted for uniformity")
    rep = sub.add_parser("report", help="write a self-contained HTML report of a run (needs the 'report' extra)",
                         description="Metrics beside the baselines, training curves, codebook health, a sample "
                                     "of the SID tree and example recommendations, in one HTML file.")
    rep.add_argument("run_dir")
    rep.add_argument("-o", "--output", help="HTML file to write (default RUN_DIR/report.html)")
    rep.add_argument("--users", type=int, default=3, help="example users with recommendations")
    rep.add_argument("--quiet", action="store_true", help="no notes about sections that could not be drawn")
    return parser


def _add_allow_stale(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-stale", action="store_true",
                   help="use model/ even when an earlier stage re-ran after it was trained (e.g. prepare on changed "
                        "data), with a warning; by default that is an error naming the stage")


def _add_interop_parsers(sub) -> None:
    ins = sub.add_parser("inspect", help="codebook health of a run's semantic IDs (table, --json, PNG plots)",
                         description="Per-level usage, perplexity, dead codes, collisions, how often nearest "
                                     "neighbours share SID prefixes vs random items, and the tokenizer's fit "
                                     "trajectory. Plots (the 'report' extra) and health.json go to "
                                     "RUN/inspect/.")
    ins.add_argument("run_dir")
    ins.add_argument("--samples", type=int, default=1000,
                     help="items whose nearest neighbour is compared (0: skip; needs the run's embeddings)")
    ins.add_argument("--seed", type=int, default=0, help="seed of the item sample and the random pairs")
    ins.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    ins.add_argument("--no-plots", action="store_true", help="write no PNG plots (no matplotlib needed)")
    ins.add_argument("--quiet", action="store_true", help="print the report only, not the files written")
    exp = sub.add_parser("export-sids", help="write a run's SIDs as JSON, parquet or an LC-Rec index file",
                         description="Export every item's SID with its key, title and token strings "
                                     "(<a_12><b_7>...): json, parquet (needs pyarrow) or index-json "
                                     "(LC-Rec/LETTER *.index.json, importable with tokenizer.name=imported).")
    exp.add_argument("run_dir")
    exp.add_argument("--format", choices=["json", "parquet", "index-json"], default="json")
    exp.add_argument("--keys", choices=["index", "item"], default="index",
                     help="index-json keys: 0-based item index (LC-Rec item ids) or the dataset's item keys")
    exp.add_argument("-o", "--output", required=True, help="file to write")
    exp.add_argument("--quiet", action="store_true", help="accepted for uniformity: the one result line is printed")


def _stage(args: argparse.Namespace, argv: list[str]) -> int:
    from sidrec import distributed as dist

    nproc = getattr(args, "nproc", 1)
    if nproc < 1:
        raise ValueError(f"--nproc: expected a positive number of processes, got {nproc}")
    if nproc > 1 and dist.world_size() == 1:  # not yet under torchrun: start it
        return dist.launch(nproc, _drop_nproc(argv))
    if dist.world_size() > 1 and args.command not in ("train", "run"):
        raise ValueError(f"{args.command} runs in one process; only train and run are data-parallel")
    try:
        return dist.worker_exit(_run_stages(args))
    finally:
        dist.shutdown()


def _run_stages(args: argparse.Namespace) -> int:
    from sidrec import distributed as dist
    from sidrec.data.splits import leave_one_out
    from sidrec.pipeline import Run, model_label, results_table

    cfg = load_config(args.config, args.overrides)
    quiet = args.quiet or not dist.is_main()  # one process reports
    run = Run(cfg, progress=not quiet, log=(lambda *_: None) if quiet else print, fresh=args.fresh)
    resume = not args.fresh
    deadline = time.time() + args.time_budget if args.time_budget else None
    if args.command == "run":
        metrics = run.run_all(resume=resume, deadline=deadline)
        if metrics is None:
            if dist.is_main():
                print(f"time budget reached; run the same command again to resume from {run.dir}")
            return 3
        if dist.is_main():
            print(results_table(metrics, cfg.eval.ks, label=model_label(cfg)))
            print(f"\nrun directory: {run.dir}  (metrics.json, config.yaml, model/)")
        return 0
    if args.command == "train":
        ds, sids, sizes = run.stage_inputs()
        model = run.stage_train(leave_one_out(ds, cfg.data.max_history), sids, sizes, resume=resume,
                                deadline=deadline)
        if model is None:
            if dist.is_main():
                print(f"time budget reached; run the same command again to resume from {run.dir}")
            return 3
        if dist.is_main():
            best = json.loads(run.run.recommender.best_json.read_text())
            valid = "  ".join(f"valid.{k} {v:.4f}" for k, v in best["valid"].items())
            print(f"model: {run.run.model}  (best epoch {best['epoch']}: {valid})")
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
    sids, sizes = run.stage_tokenize(emb)  # the "tokenize" command
    print(f"semantic IDs: {sids.shape[0]} items x {sids.shape[1]} tokens, level sizes {sizes}")
    return 0


def _drop_nproc(argv: list[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N`` (the launched processes must not launch again)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _evaluate(args: argparse.Namespace) -> int:
    from sidrec.data.dataset import Dataset
    from sidrec.data.splits import leave_one_out
    from sidrec.models.registry import load_recommender
    from sidrec.pipeline import Run, check_model, model_label, results_table
    from sidrec.tokenizers import load_sids

    check_model(args.run_dir, args.allow_stale)
    run = Run.open(args.run_dir, progress=not args.quiet, log=(lambda *_: None) if args.quiet else print)
    if args.exact or args.exact_users is not None:
        run.cfg.eval.exact = True
        run.cfg.eval.exact_users = args.exact_users or 0
        run.cfg.validate()
    ds = Dataset.load(run.run.data)
    sids, sizes = load_sids(run.run.sids_dir)
    model = load_recommender(run.run.model, run.device)
    metrics = run.stage_evaluate(ds, leave_one_out(ds, run.cfg.data.max_history), model, sids, sizes)
    print(results_table(metrics, run.cfg.eval.ks, label=model_label(run.cfg)))
    return 0


def _recommend(args: argparse.Namespace) -> int:
    from sidrec.serve.service import Recommender

    rec = Recommender.from_run(args.run_dir, bf16=args.bf16, allow_stale=args.allow_stale)
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
    serve(args.run_dir, host=args.host, port=args.port, api_key_env=args.api_key_env, quiet=args.quiet,
          bf16=args.bf16, allow_stale=args.allow_stale)
    return 0


def _presets(args: argparse.Namespace) -> int:
    from sidrec.config import preset_path, preset_summary, presets

    if args.name is not None:
        print(preset_path(args.name).read_text(encoding="utf-8"), end="")
        return 0
    rows = [("name", "data", "tokenizer", "model", "what it is")]
    for name, path in presets().items():
        cfg = load_config(path)
        model = cfg.model.name + ("" if cfg.schedule.plain else f" ({cfg.schedule.name})")
        rows.append((name, f"{cfg.data.name} ({cfg.data.format})", cfg.tokenizer.name, model, preset_summary(path)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(f"{c:<{w}}" for c, w in zip(r, widths)) + "  " + r[4])
    print("\nsidrec run NAME [key=value ...] runs one; sidrec presets NAME prints its YAML")
    return 0


def _report(args: argparse.Namespace) -> int:
    from sidrec.report import write_report

    out = write_report(args.run_dir, args.output, num_users=args.users,
                       log=(lambda *_: None) if args.quiet else print)
    print(f"report: {out}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from sidrec.eval.health import health_table, level_counts
    from sidrec.report import inspect_run
    from sidrec.utils import atomic_write_json

    if args.samples < 0:
        raise ValueError(f"--samples: must be >= 0, got {args.samples}")
    if not args.no_plots:
        from sidrec.eval.plots import require_matplotlib

        try:
            require_matplotlib()
        except ImportError as e:
            raise ValueError(f"{e}; or pass --no-plots") from None
    report, codes = inspect_run(args.run_dir, num_samples=args.samples, seed=args.seed)
    out = RunDir(args.run_dir).inspect
    atomic_write_json(out / "health.json", report)
    written = [out / "health.json"]
    if not args.no_plots:
        import torch

        from sidrec.eval.plots import save_health_plots

        written += save_health_plots(report, level_counts(torch.as_tensor(codes), report["level_sizes"]), out)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(health_table(report))
        if not args.quiet:
            print("\nwritten: " + ", ".join(str(p) for p in written))
    return 0


def _export_sids(args: argparse.Namespace) -> int:
    from sidrec.data.dataset import Dataset
    from sidrec.tokenizers import load_sids
    from sidrec.tokenizers.index import export_sids

    run = RunDir(args.run_dir)
    if not run.sids_file(run.sids_dir).is_file():
        raise FileNotFoundError(f"{run.sids_file(run.sids_dir)}: missing; has the run been tokenized?")
    sids, sizes = load_sids(run.sids_dir)  # the SIDs the model reads
    try:
        path = export_sids(Dataset.load(run.data), sids, sizes, args.output, args.format, args.keys)
    except ImportError as e:
        raise ValueError(str(e)) from None
    print(f"{len(sids)} items x {sids.shape[1]} tokens ({args.format}) -> {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops filling the ``overrides`` positional at the first flag: ``run CONFIG --quiet a=1`` leaves
    # ``a=1`` over. Overrides may stand anywhere after the config; anything else left over is an error.
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "recommend":
            return _recommend(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "inspect":
            return _inspect(args)
        if args.command == "export-sids":
            return _export_sids(args)
        if args.command == "report":
            return _report(args)
        if args.command == "presets":
            return _presets(args)
        return _stage(args, argv)
    except (ConfigError, ValueError, FileNotFoundError, KeyError, ImportError, CheckpointError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"sidrec {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
