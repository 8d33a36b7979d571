"""The transition mix (``eval.transition_mix``) on validation only, for the best checkpoint of a run so far.

Loads ``<run>/recommender/best`` (a run still training has one after its first epoch), decodes the validation
users once with the beam, and reports validation Recall/NDCG@10 of the beam, of the mix at every lambda of the grid
(``sidrec.eval.hybrid.LAMBDAS``) and of the transition row. With ``--exact-users N`` it also scores the whole
catalogue for N seeded validation users (``eval.exact``'s pass) and reports how much of the exact top K the beam
misses. Test is not touched: this is for choosing, not for reporting.

    PYTHONPATH=. python benchmarks/mix_on_valid.py runs/beauty-b512-cos24 --out benchmarks/results/beauty_mix_valid.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from sidrec.config import load_config
from sidrec.data.dataset import Dataset
from sidrec.data.splits import leave_one_out
from sidrec.decoding.trie import SidTrie
from sidrec.eval.evaluate import exact_evaluation, generate_rankings
from sidrec.eval.hybrid import LAMBDAS, TransitionTable, mix_rankings
from sidrec.eval.metrics import baseline_metrics, topk_metrics
from sidrec.models.registry import recommender_spec
from sidrec.rundir import RunDir
from sidrec.tokenizers import load_sids
from sidrec.utils import atomic_write_json, read_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--users", type=int, default=0, help="a seeded subset of validation users (0 = all)")
    ap.add_argument("--exact-users", type=int, default=0, help="also the beam-miss rates on this many users")
    ap.add_argument("--out")
    args = ap.parse_args()
    rd = RunDir(Path(args.run_dir))
    cfg = load_config(str(rd.root / "config.yaml"))
    ds = Dataset.load(rd.data)
    split = leave_one_out(ds, cfg.data.max_history)
    ex = split.valid
    if args.users:
        keep = np.sort(np.random.default_rng(cfg.seed).permutation(len(ex.target))[: args.users])
        ex = ex.subset(keep)
    sids, level_sizes = load_sids(rd.tokenizer)
    model_cfg = cfg.model.model_config(level_sizes=level_sizes, max_history=split.max_history, latent_dim=0)
    model = recommender_spec(cfg.model.name).model(model_cfg)
    model.load_state_dict(load_file(str(rd.recommender.best_model)))
    best = read_json(rd.recommender.best_model.parent / "best.json")
    item_sids = torch.as_tensor(sids)
    trie = SidTrie(item_sids, level_sizes)
    start = time.time()
    ranked, scores = generate_rankings(model, ex, item_sids, trie, cfg.eval.beam_size, 20, cfg.eval.batch_size,
                                       progress=False, bf16=cfg.eval.bf16, with_scores=True)
    decode_s = time.time() - start
    table = TransitionTable.from_sequences(ds.sequences, 2, ds.num_items)
    last = ex.history[:, -1]
    ks = [5, 10, 20]
    rows = {"beam": topk_metrics(ranked, ex.target, ks)}
    for lam in LAMBDAS[1:]:
        rows[f"mix {lam:g}"] = topk_metrics(mix_rankings(ranked, scores, last, table, lam, 20), ex.target, ks)
    rows.update(baseline_metrics(ds.sequences, ex.history, ex.target, 2, ds.num_items, ks))
    for name, m in rows.items():
        print(f"{name:>12}  R@10 {m['recall@10']:.4f}  N@10 {m['ndcg@10']:.4f}")
    exact = None
    if args.exact_users:
        start = time.time()
        exact = exact_evaluation(model, ex, item_sids, trie, cfg.eval.beam_size, ks, cfg.eval.batch_size,
                                 users=args.exact_users, seed=cfg.seed, progress=False, bf16=cfg.eval.bf16)
        exact["seconds"] = round(time.time() - start, 1)
        print("exact:", {k: round(v, 4) for k, v in exact.items()})
    if args.out:
        atomic_write_json(args.out, {
            "run_dir": args.run_dir, "checkpoint_epoch": best["epoch"], "users": len(ex.target),
            "decode_seconds": round(decode_s, 1), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "valid": {name: {k: round(v, 5) for k, v in m.items()} for name, m in rows.items()},
            "exact_valid": exact,
        })


if __name__ == "__main__":
    main()
