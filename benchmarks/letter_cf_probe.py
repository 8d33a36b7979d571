"""LETTER's L_CF on real data (issue 22, item 6): the scale of the collaborative embeddings and what L_CF does.

L_CF is a cross-entropy over raw dot products z_hat . h (LETTER's ``CF_loss``), so its strength grows with the norm
of the collaborative rows h. The authors' released 32-d SASRec embeddings of Instruments
(``RQ-VAE/ckpt/Instruments-32d-sasrec.pt``) have row norms 0.35 .. 1.22 (mean 0.78). This probe trains our
``sasrec`` source (32-d SASRec, a reduced budget of ``--sasrec-epochs`` epochs on 1 CPU thread), records its row
norms, and fits LETTER (4 x 256 codes, latent 32, alpha 0.02, beta 1e-4, no input standardisation, as LETTER's code)
on Instruments' co-occurrence embeddings (``configs/letter-instruments.yaml``), with L_CF off and on, over two
tokenizer seeds, with the collaborative rows raw or L2-normalised (``tokenizer.collab.normalize``).

The effect measured: the share of collaborative neighbour pairs (each item and its 10 nearest items by cosine in the
SASRec embeddings) whose first code is the same. L_CF works if the share with it exceeds the share without it by
more than the spread between two tokenizer seeds.

    SIDREC_DATA=/work/shared/data OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/letter_cf_probe.py \\
        --out benchmarks/results

Writes ``<out>/letter_cf_probe.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from sidrec.data.loaders import data_root, load_dataset
from sidrec.embeddings import EmbedConfig, embed_items
from sidrec.tokenizers import Letter, LetterConfig, codebook_health
from sidrec.tokenizers.base import row_norms
from sidrec.training.sasrec import SASRecTrainConfig, sasrec_item_embeddings
from sidrec.utils import atomic_write_json


def neighbours(h: torch.Tensor, k: int) -> torch.Tensor:
    """(N, k) indices of each row's k nearest other rows by cosine."""
    u = torch.nn.functional.normalize(h, dim=1)
    out = []
    for chunk in u.split(2048):
        sim = chunk @ u.T  # (c, N)
        sim[torch.arange(len(chunk)), torch.arange(len(out) * 2048, len(out) * 2048 + len(chunk))] = -2.0
        out.append(sim.topk(k, dim=1).indices)
    return torch.cat(out)


def first_code_sharing(codes: torch.Tensor, nbrs: torch.Tensor) -> float:
    """Share of (item, neighbour) pairs whose first code is the same."""
    return float((codes[nbrs, 0] == codes[:, None, 0]).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--cache", default=".sidrec/cache/letter_cf_probe")
    parser.add_argument("--sasrec-epochs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30, help="LETTER epochs")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1])
    parser.add_argument("--variants", nargs="*", default=["no L_CF", "L_CF, L2-normalised collab"],
                        help="among 'no L_CF', 'L_CF, L2-normalised collab', 'L_CF, raw collab'")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    ds = load_dataset("lcrec", data_root() / "amazon-instruments", name="Instruments")
    x = torch.as_tensor(embed_items(ds, EmbedConfig(sources=["cooccurrence"]), progress=False))
    cache = Path(args.cache) / f"sasrec32-e{args.sasrec_epochs}"
    npy = cache.with_suffix(".npy")
    if not npy.is_file():
        train = SASRecTrainConfig(epochs=args.sasrec_epochs, patience=args.sasrec_epochs, bf16=False, log_every=0)
        npy.parent.mkdir(parents=True, exist_ok=True)
        np.save(npy, sasrec_item_embeddings(ds, 32, 0, cache, "cpu", train, progress=False))
    collab = torch.as_tensor(np.load(npy))
    sasrec_seconds = time.perf_counter() - t0
    nbrs = neighbours(collab, 10)
    results: dict = {"sasrec_epochs": args.sasrec_epochs, "sasrec_seconds": sasrec_seconds,
                     "scale": {"input (co-occurrence)": row_norms(x), "collab raw": row_norms(collab)}, "fits": {}}
    print(json.dumps(results["scale"]), flush=True)
    variants = {"no L_CF": (0.0, False), "L_CF, L2-normalised collab": (0.02, True), "L_CF, raw collab": (0.02, False)}
    for name in args.variants:
        alpha, normalise = variants[name]
        h = torch.nn.functional.normalize(collab, dim=1) if normalise else collab
        for seed in args.seeds:
            t = time.perf_counter()
            cfg = LetterConfig(alpha=alpha, epochs=args.epochs, latent_dim=32, div_weight=1e-4)
            tok = Letter(cfg, x.shape[1]).fit(x, collab=h if alpha > 0 else None, seed=seed, device="cpu",
                                              progress=False)
            codes = tok.encode(x)
            with torch.no_grad():
                z_hat = tok.quantizer(tok.encoder(tok.standardize(x))).quantized
            health = codebook_health(codes, cfg.codebook_size)
            results["fits"][f"{name}, seed {seed}"] = {
                "first_code_sharing": first_code_sharing(codes, nbrs),
                "random_pair_sharing": float((codes[torch.randperm(len(codes)), 0] == codes[:, 0]).float().mean()),
                "z_hat": row_norms(z_hat), "usage_level1": health["usage"][0],
                "collision_rate": health["collision_rate"], "seconds": time.perf_counter() - t}
            print(name, seed, json.dumps(results["fits"][f"{name}, seed {seed}"]), flush=True)
    results["seconds"] = time.perf_counter() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "letter_cf_probe.json", results)


if __name__ == "__main__":
    main()
