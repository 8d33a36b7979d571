"""Decoding speed: our batched trie beam search vs transformers' generate with a Python dict trie (LETTER's way).

Both decode the same weights (``sidrec.decoding.hf_reference.tiger_to_hf``) with 20 beams and return the top 10
items per user; the script reports users/s of each, the speed-up and the top-10 agreement (exact list match rate
and mean overlap@10) on the users both decoded.

Data: the Amazon Beauty test users (22,363) with either a trained run (``--run runs/beauty``: its model and
SIDs) or, by default, a random-weight TIGER of the Beauty size on SIDs from RQ-KMeans (3 x 256 + dedup) over
co-occurrence embeddings of the real Beauty interactions (cached in ``--work``).

CPU (small sample)::

    PYTHONPATH=. python benchmarks/decode_vs_hf.py --users 200 --device cpu

GPU, all users (the target: ours <= 5 s on one H100 and >= 10x transformers; transformers is timed on a sample
because it is slow, the rate is what is compared)::

    SIDREC_DATA=.carry/data PYTHONPATH=. python benchmarks/decode_vs_hf.py --users 0 --hf-users 2000 \
        --batch-size 4096 --hf-batch-size 256 --device cuda --out benchmarks/results/decode_vs_hf_h100.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from sidrec.config import load_config
from sidrec.data.dataset import Dataset
from sidrec.data.splits import leave_one_out
from sidrec.decoding.beam import constrained_beam_search
from sidrec.decoding.hf_reference import dict_trie, hf_beam_search, tiger_to_hf
from sidrec.decoding.trie import SidTrie
from sidrec.eval.evaluate import model_inputs
from sidrec.models.tiger import Tiger, TigerConfig, load_model
from sidrec.pipeline import Run
from sidrec.tokenizers import load_sids
from sidrec.utils import atomic_write_json


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def beauty_problem(work: str) -> tuple[Dataset, np.ndarray, list[int], TigerConfig]:
    """Amazon Beauty with RQ-KMeans SIDs (3 x 256 + dedup) of co-occurrence embeddings (stages cached in ``work``)
    and the beauty preset's TIGER config (the paper's sizes): (dataset, SIDs (N, Lc), level sizes, config)."""
    overrides = [f"run_dir={work}/run", f"cache_dir={work}/cache", "embed.sources=[cooccurrence]",
                 "tokenizer.name=rqkmeans", "tokenizer.params={num_levels: 3, codebook_size: 256, iters: 20}",
                 "train.device=cpu"]
    run = Run(load_config("beauty", overrides), progress=False, log=lambda *_: None)
    ds, sids, sizes = run.stage_inputs()
    return ds, sids, sizes, run.cfg.model.model_config(level_sizes=sizes, max_history=run.cfg.data.max_history)


def load_problem(args: argparse.Namespace, device: torch.device):
    """(model, item SIDs (N, Lc), level sizes, test examples, source description)."""
    if args.run:
        run = Path(args.run)
        ds = Dataset.load(run / "data")
        sids, sizes = load_sids(run / "tokenizer")
        model = load_model(run / "model", device=device)
        source = f"trained run {run}"
    else:
        ds, sids, sizes, cfg = beauty_problem(args.work)
        cfg = dataclasses.replace(cfg, dropout=0.0)
        model = Tiger(cfg, generator=torch.Generator().manual_seed(args.seed)).to(device)
        source = "random-weight TIGER (Beauty size), RQ-KMeans SIDs of co-occurrence embeddings"
    split = leave_one_out(ds, model.cfg.max_history)
    return model.eval(), torch.as_tensor(sids, device=device), sizes, split.test, source


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="a trained run directory (default: random weights, RQ-KMeans SIDs)")
    ap.add_argument("--work", default=".sidrec/bench-decode", help="cache for the default problem")
    ap.add_argument("--users", type=int, default=200, help="test users decoded by ours (0 = all)")
    ap.add_argument("--hf-users", type=int, default=None, help="users decoded by transformers (default: --users)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--hf-batch-size", type=int, default=64)
    ap.add_argument("--beam-size", type=int, default=20)
    ap.add_argument("--topk", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bf16", action="store_true", help="ours under bf16 autocast on CUDA, as sidrec evaluate runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="results JSON (default: benchmarks/results/decode_vs_hf_<dev>.json)")
    args = ap.parse_args()
    device = torch.device(args.device)
    model, item_sids, sizes, test, source = load_problem(args, device)
    n_all = len(test)
    n = n_all if args.users == 0 else min(args.users, n_all)
    n_hf = min(n if args.hf_users is None else args.hf_users, n)
    pick = np.sort(np.random.default_rng(args.seed).choice(n_all, n, replace=False))
    test = test.subset(pick)
    hist = torch.as_tensor(test.history, device=device)
    users = torch.as_tensor(test.user, device=device)
    ids, mask = model_inputs(model, item_sids, hist, users)  # (n, T)
    trie = SidTrie(item_sids, sizes).to(device)
    tokens = item_sids + model.level_offsets  # (N, Lc) vocabulary tokens
    print(f"{source}: {len(item_sids)} items, levels {sizes}, {model.num_parameters() / 1e6:.2f}M parameters; "
          f"{n} users (ours), {n_hf} (transformers), device {device}")

    def ours(lo: int, hi: int) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16 and device.type == "cuda"):
            return constrained_beam_search(model, ids[lo:hi], mask[lo:hi], trie, args.beam_size, args.topk).items

    ours(0, min(n, args.batch_size))  # warm-up (allocator, kernels)
    _sync(device)
    t0 = time.perf_counter()
    ranked = torch.cat([ours(lo, lo + args.batch_size) for lo in range(0, n, args.batch_size)])
    _sync(device)
    ours_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    hf = tiger_to_hf(model)
    py_trie = dict_trie(tokens.cpu())
    hf_setup_s = time.perf_counter() - t0
    hf_beam_search(hf, ids[:2], mask[:2], tokens.cpu(), py_trie, args.beam_size, args.topk)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    theirs = torch.cat([
        hf_beam_search(hf, ids[lo : min(lo + args.hf_batch_size, n_hf)], mask[lo : min(lo + args.hf_batch_size, n_hf)],
                       tokens.cpu(), py_trie, args.beam_size, args.topk)
        for lo in range(0, n_hf, args.hf_batch_size)
    ])
    _sync(device)
    hf_s = time.perf_counter() - t0

    a, b = ranked[:n_hf].cpu(), theirs.cpu()
    overlap = np.mean([len(set(x) & set(y)) / args.topk for x, y in zip(a.tolist(), b.tolist(), strict=True)])
    result = {
        "source": source, "device": str(device),
        "machine": torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.processor() or 'cpu'}, "
                   f"{torch.get_num_threads()} torch threads",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "items": len(item_sids), "level_sizes": sizes,
        "beam_size": args.beam_size, "topk": args.topk,
        "ours": {"users": n, "seconds": round(ours_s, 3), "users_per_s": round(n / ours_s, 1),
                 "batch_size": args.batch_size, "bf16": args.bf16 and device.type == "cuda"},
        "transformers": {"users": n_hf, "seconds": round(hf_s, 3), "users_per_s": round(n_hf / hf_s, 1),
                         "batch_size": args.hf_batch_size, "setup_seconds": round(hf_setup_s, 3)},
        "speedup": round((n / ours_s) / (n_hf / hf_s), 2),
        "agreement": {"users": n_hf, "exact_top10_match": float((a == b).all(1).float().mean()),
                      "overlap_at_10": round(float(overlap), 4)},
    }
    print(json.dumps(result, indent=2))
    out = args.out or f"benchmarks/results/decode_vs_hf_{device.type}.json"
    atomic_write_json(out, result)


if __name__ == "__main__":
    main()
