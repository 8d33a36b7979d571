"""Tokenizer fits only (no recommender): codebook health and fit time of rqvae, rqkmeans, letter and cost.

Each method is fitted with its preset's parameters (``configs/<dataset>.yaml`` for rqvae, the same with
rqkmeans 3 x 256, ``configs/{letter,cost}-<dataset>.yaml``) on the same item embeddings (the presets share their
``embed`` section); LETTER also gets its preset's collaborative embeddings. Writes
``<out>/tokenizer_fits_<dataset>.json`` (health before and after LETTER's repair, seconds per fit) and prints a
markdown table. A finished method's run directory is reused by a later call (the pipeline's stage cache).

    PYTHONPATH=. python benchmarks/tokenizer_fits.py --dataset instruments --runs /tmp/fits

Extra ``key=value`` arguments override every fit's config (e.g. ``train.device=cpu``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from sidrec.config import load_config
from sidrec.pipeline import Run
from sidrec.utils import atomic_write_json, read_json

METHODS = ("rqvae", "rqkmeans", "letter", "cost")


def fit_one(dataset: str, method: str, args: argparse.Namespace) -> dict:
    """Prepare, embed and tokenize one method; health of the final SIDs and of the greedy codes, and timing."""
    config = {"letter": f"configs/letter-{dataset}.yaml", "cost": f"configs/cost-{dataset}.yaml"}.get(
        method, f"configs/{dataset}.yaml"
    )
    overrides = [f"run_dir={Path(args.runs) / dataset / method}", f"cache_dir={args.cache}"]
    if method == "rqkmeans":
        overrides.append("tokenizer={name: rqkmeans, params: {num_levels: 3, codebook_size: 256}}")
    if method == "letter" and args.letter_collab:
        overrides.append(f"tokenizer.collab={args.letter_collab}")
    overrides += args.overrides
    cfg = load_config(config, overrides)
    run = Run(cfg, progress=False, log=print)
    emb = run.stage_embed(run.stage_prepare())
    cached = run._done("tokenize", run.keys()["tokenize"])
    start = time.time()
    run.stage_tokenize(emb)
    seconds = None if cached else time.time() - start  # fitted by an earlier call: time unknown here
    tdir = run.dir / "tokenizer"
    health = read_json(tdir / "health.json")
    last = json.loads((tdir / "fit_log.jsonl").read_text(encoding="utf-8").splitlines()[-1])
    return {"method": method, "config": config, "overrides": overrides, "items": int(emb.shape[0]),
            "embedding_dim": int(emb.shape[1]), "params": cfg.tokenizer.params,
            "codebook_size": read_json(tdir / "tokenizer.json")["config"]["codebook_size"],
            "collab": None if cfg.tokenizer.collab is None else cfg.tokenizer.collab.sources,
            "health": health, "greedy_collision_rate": last["collision_rate"],
            "greedy_max_group": last["max_group"], "seconds": seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--dataset", default="instruments", choices=["beauty", "instruments"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--runs", default="runs/tokenizer_fits")
    ap.add_argument("--cache", default=".sidrec/cache")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--letter-collab", metavar="YAML",
                    help="LETTER's tokenizer.collab instead of the preset's (e.g. '{sources: [cooccurrence], "
                         "cooccurrence_dim: 32}' where training a SASRec is too slow)")
    args = ap.parse_args()
    rows = []
    for method in args.methods:
        print(f"== {method}", flush=True)
        rows.append(fit_one(args.dataset, method, args))
    lines = ["| method | levels x K | usage per level | collisions (greedy codes) | max group | fit seconds |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        h = r["health"]
        usage = " / ".join(f"{u:.3f}" for u in h["usage"])
        lines.append(f"| {r['method']} | {len(h['usage'])} x {r['codebook_size']} | {usage} | "
                     f"{h['collision_rate']:.4f} ({r['greedy_collision_rate']:.4f}) | {h['max_group']} | "
                     f"{'cached' if r['seconds'] is None else round(r['seconds'])} |")
    table = "\n".join(lines)
    print(table)
    atomic_write_json(Path(args.out) / f"tokenizer_fits_{args.dataset}.json", {"rows": rows, "table": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
