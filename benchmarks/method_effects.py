"""Method effects on Amazon Office (issue 14, "done when"): does each method's added term change the codes?

Items: configs/office.yaml's data and full-text embeddings (2,420 items, 384-d MiniLM, rows of norm 1). LETTER's
collaborative embeddings are the 32-d co-occurrence source (SVD of windowed co-occurrence counts, cached), not its
preset's 32-d SASRec: a SASRec fit takes ~100 s per epoch on 2 shared cores, over the budget of this check. LETTER
reads both as its presets do since issue 22: the input not standardised (``standardize: false``, as LETTER's code)
and the collaborative rows of norm 1 (the co-occurrence source L2-normalises its rows, as
``tokenizer.collab.normalize: true`` does the preset's SASRec rows). CoST keeps its preset's standardisation.
Each method family is fitted with one seed and its own geometry, once with its added term switched off (the
backbone) and once per variant with it on, so that the only difference between a variant and its backbone is the
term (same initialisation, same batches):

- LETTER (3 levels x 128 codes as office.yaml, latent 32, LETTER's reductions, Sinkhorn last level and balanced
  init in every fit, 100 epochs): backbone alpha = beta = 0; + L_CF (alpha 0.02); + L_CF + L_Div (beta 1e-4);
  the same fits again on standardised input ("letter, standardised", LETTER's input before issue 22), whose backbone
  keeps its codebooks in use at this budget where the unstandardised backbone collapses;
- CoST (its preset: 3 x 64, latent 96, encoder 512-256-128, 100 epochs): backbone ``recon: mse``; ``contrastive``
  (the paper's).

The backbone refitted with the next seed gives the floor: how many SIDs change for no reason but the seed.
Reported per fit: the share of items whose learned codes (LETTER's after its collision repair) differ from the
backbone's, and whose first code does, after renaming each level's code labels onto the backbone's by the
one-to-one matching of most shared items (labels are arbitrary: compared raw, ``raw_sid_changed``, nearly every
SID of every fit differs, the reseeded backbone's too); and ``prefix_sharing`` (all items): the share
whose nearest neighbour shares the first l codes, neighbours by cosine in the collaborative embeddings (what L_CF
pulls together) and in the text embeddings (what the tokenizer reads); random pairs of the same fit for reference.

    OMP_NUM_THREADS=2 PYTHONPATH=. .venv/bin/python benchmarks/method_effects.py --out benchmarks/results

Writes ``<out>/method_effects.json`` and prints the markdown table of docs/results.md ("Method effects"). About
4 minutes on 2 CPU cores (11 tokenizer fits), 10 when the cores are shared.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from sidrec.config import load_config
from sidrec.embeddings import EmbedConfig, embed_items
from sidrec.eval.locality import prefix_sharing
from sidrec.pipeline import Run
from sidrec.tokenizers import CoST, CoSTConfig, Letter, LetterConfig
from sidrec.tokenizers.base import codebook_health
from sidrec.utils import atomic_write_json

# 100 epochs for both families (CoST's preset; LETTER's default is 150) to fit 11 fits in the CPU budget.
# standardize False: LetterConfig's default and the LETTER presets' (LETTER's code reads its inputs as they are).
LETTER_BASE = dict(num_levels=3, codebook_size=128, latent_dim=32, alpha=0.0, div_weight=0.0, epochs=100,
                   standardize=False)
LETTER_VARIANTS = [("+ L_CF (alpha 0.02)", {"alpha": 0.02}), ("LETTER (alpha 0.02, beta 1e-4)", {"alpha": 0.02,
                                                                                               "div_weight": 1e-4})]
# (family, its base params, its variants): "letter, standardised" is the same family on standardised input (before
# issue 22), whose backbone does not collapse at this budget (the unstandardised one does: docs/results.md)
FAMILIES: list[tuple[str, dict[str, Any], list[tuple[str, dict[str, Any]]]]] = [
    ("letter", {}, LETTER_VARIANTS),
    ("letter, standardised", {"standardize": True}, LETTER_VARIANTS),
    ("cost", {}, [("contrastive (CoST)", {"recon": "contrastive"})]),
]


def office(cache: Path, runs: Path, seed: int) -> tuple[Tensor, Tensor]:
    """Office's text embeddings ``(N, 384)`` (configs/office.yaml) and 32-d co-occurrence embeddings ``(N, 32)``."""
    cfg = load_config("configs/office.yaml", [f"run_dir={runs}", f"cache_dir={cache}", "train.device=cpu"])
    run = Run(cfg, progress=False, log=print)
    ds = run.stage_prepare()
    emb = run.stage_embed(ds)
    collab = embed_items(ds, EmbedConfig(sources=["cooccurrence"], cooccurrence_dim=32, seed=seed),
                         cache / "embeddings", device="cpu", progress=False)
    return torch.as_tensor(emb, dtype=torch.float32), torch.as_tensor(collab, dtype=torch.float32)


def fit(family: str, params: dict[str, Any], emb: Tensor, collab: Tensor, seed: int) -> tuple[Tensor, float]:
    """SIDs ``(N, L + 1)`` of one fit and its seconds."""
    start = time.time()
    if family.startswith("letter"):
        tok = Letter(LetterConfig(**{**LETTER_BASE, **params}), emb.shape[1])
        tok.fit(emb, collab=collab, seed=seed, device="cpu", progress=False)
    else:
        tok = CoST(CoSTConfig(**{"recon": "mse", **params}), emb.shape[1])
        tok.fit(emb, seed=seed, device="cpu", progress=False)
    return tok.semantic_ids(emb), time.time() - start


def matched(codes: Tensor, reference: Tensor, codebook_size: int) -> Tensor:
    """``codes (N, L)`` with each level's labels renamed onto ``reference``'s by the one-to-one matching of most
    shared items (Hungarian): code labels are arbitrary, so two fits agree on an item when their matched codes do."""
    out = torch.empty_like(codes)
    for level in range(codes.shape[1]):
        overlap = torch.zeros(codebook_size, codebook_size)  # (ours, reference's) items in common
        overlap.index_put_((codes[:, level], reference[:, level]), torch.ones(len(codes)), accumulate=True)
        ours, theirs = linear_sum_assignment(overlap.numpy(), maximize=True)
        rename = torch.empty(codebook_size, dtype=torch.long)
        rename[torch.as_tensor(ours)] = torch.as_tensor(theirs)
        out[:, level] = rename[codes[:, level]]
    return out


def describe(sids: Tensor, backbone: Tensor, emb: Tensor, collab: Tensor, codebook_size: int) -> dict[str, Any]:
    codes = sids[:, :-1]  # (N, L) learned codes
    same = matched(codes, backbone[:, :-1], codebook_size) == backbone[:, :-1]  # (N, L)
    return {
        "codes_changed": float((~same).any(1).float().mean()),
        "first_code_changed": float((~same[:, 0]).float().mean()),
        "raw_sid_changed": float((sids != backbone).any(1).float().mean()),
        "collab_neighbours": prefix_sharing(codes, collab, num_samples=len(codes)),
        "text_neighbours": prefix_sharing(codes, emb, num_samples=len(codes)),
        "collision_rate": codebook_health(codes, codebook_size)["collision_rate"],
    }


def table(results: dict[str, Any]) -> str:
    lines = ["| family | fit | codes changed vs backbone | first code changed | collab. neighbours sharing code 1 / "
             "codes 1-2 | text neighbours sharing code 1 / codes 1-2 | random pairs sharing code 1 / codes 1-2 | "
             "collisions |", "|---|---|---|---|---|---|---|---|"]
    for family, rows in results["families"].items():
        for row in rows:
            c, t = row["collab_neighbours"]["neighbour"], row["text_neighbours"]["neighbour"]
            r = row["collab_neighbours"]["random"]
            lines.append(f"| {family} | {row['fit']} | {row['codes_changed']:.1%} | {row['first_code_changed']:.1%} | "
                         f"{c[0]:.3f} / {c[1]:.3f} | {t[0]:.3f} / {t[1]:.3f} | {r[0]:.3f} / {r[1]:.3f} | "
                         f"{row['collision_rate']:.3f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--cache", default=".sidrec/cache")
    ap.add_argument("--runs", default="runs/method_effects")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    emb, collab = office(Path(args.cache), Path(args.runs), args.seed)
    results: dict[str, Any] = {"items": len(emb), "embedding_dim": emb.shape[1], "collab_dim": collab.shape[1],
                               "seed": args.seed, "letter_base": LETTER_BASE, "families": {}}
    for family, base, variants in FAMILIES:
        size = 128 if family.startswith("letter") else CoSTConfig().codebook_size
        backbone, seconds = fit(family, base, emb, collab, args.seed)
        rows = [{"fit": "backbone", "params": base, "seconds": seconds,
                 **describe(backbone, backbone, emb, collab, size)}]
        print(family, "backbone", f"{seconds:.0f}s", flush=True)
        reseeded, seconds = fit(family, base, emb, collab, args.seed + 1)
        rows.append({"fit": f"backbone, seed {args.seed + 1}", "params": base, "seconds": seconds,
                     **describe(reseeded, backbone, emb, collab, size)})
        for name, params in variants:
            sids, seconds = fit(family, {**base, **params}, emb, collab, args.seed)
            rows.append({"fit": name, "params": {**base, **params}, "seconds": seconds,
                         **describe(sids, backbone, emb, collab, size)})
            print(family, name, f"{seconds:.0f}s", flush=True)
        results["families"][family] = rows
    out = Path(args.out) / "method_effects.json"
    atomic_write_json(out, results)
    print(table(results))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
