"""Loss balance: gradient norm of every weighted loss term at the parameters it is meant to move (issues 14, 22).

For each method the tokenizer is pre-fitted briefly on synthetic items with planted structure at the papers' sizes
(LETTER and CoST: 448-d inputs as Beauty's text + co-occurrence; ETEGRec, SODA, DIGER: 256-d SASRec-like inputs,
128-d latents), then the norm of the gradient of each weighted term is taken, term by term, over a few batches:

- LETTER (4 x 256, latent 32, alpha 0.02, beta 1e-4): alpha * L_CF at the encoder against L_Sem (recon + rq) there;
  beta * L_Div at the codebooks against rq there (recon reaches the codebooks only through the straight-through
  estimator, i.e. not at all);
- CoST (3 x 64, latent 96, alpha 0.1, recon "mse+contrastive"): alpha * L_cl against the squared error at the
  encoder and decoder;
- ETEGRec tokenizer phase (3 x 256, latent 128): mu * L_SIA and lambda * L_PSA against L_SQ at all tokenizer
  parameters, with ETEGRec's recommender (d_model 128, 2 + 2 layers instead of 6 + 6 to fit a CPU budget: the
  alignment heads read its last states either way, and a dedup level of 256 codes, as the unstandardised fit puts
  up to ~80 items on one code tuple) trained 20 steps first;
- SODA tokenizer phase on TIGER (gamma 0.1): gamma * L_SODA against L_SQ at the tokenizer;
- DIGER joint phase (SDUD, soft codes on raw distances, ours): L_REC (through SDUD's wrapping) against L_SQ at the
  codebooks.

"before" is commit 738ce40's reductions, weights and input handling: every tokenizer loss summed over dimensions
(``reduction: sum``; for CoST its old ``rq_reduction: mean``, i.e. the summed codebook terms / d), inputs
standardised (``standardize: true`` in every preset), LETTER's collaborative rows raw (planted, norm ~17), ETEGRec
mu 3e-4 and lambda 1e-4 with L_SIA summed over levels (L times the level mean used now) and L_PSA the mean of its
two directions (half the sum used now), both rescaled here rather than re-implemented, and SODA on raw logits
(``SODAConfig(normalize=False)``). L_SIA's sign and gradient path, LETTER's Sinkhorn last level and balanced
initialisation are the current code's in both columns (``benchmarks/sia_probe.py`` measures the L_SIA variants).
"after" is the current code at the presets' settings: ``reduction: mean``; item rows L2-normalised as the pipeline's
embeddings (per block for the 448-d text + co-occurrence input); LETTER and ETEGRec not standardised (their
presets, as their reference codes), LETTER's collaborative rows L2-normalised (``tokenizer.collab.normalize``),
ETEGRec's encoder 256-512-256-128 with mu 1e-4 and lambda 3e-4 (``SIAConfig`` / ``PSAConfig`` defaults, its code's
weights); SODA on per-level normalised logits (``SODAConfig`` default); CoST, SODA's RQ-VAE and DIGER standardised
as their presets still are. Ratios are weighted term / main term.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/loss_balance.py --out benchmarks/results

Writes ``<out>/loss_balance.json`` and prints the markdown table of docs/results.md ("Loss balance"). About 4 min on
one CPU core.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sidrec.config import ScheduleConfig
from sidrec.data.dataset import Dataset
from sidrec.data.splits import leave_one_out
from sidrec.models.etegrec import ETEGRec, ETEGRecConfig
from sidrec.models.tiger import Tiger, TigerConfig
from sidrec.tokenizers import RQVAE, CoST, CoSTConfig, Letter, LetterConfig, RQVAEConfig
from sidrec.tokenizers.diger import DIGER, DIGERConfig
from sidrec.training.losses import LossesConfig, PSAConfig, SIAConfig, SODAConfig
from sidrec.training.schedules import joint_losses, semantic_ids_for, set_phase
from sidrec.utils import atomic_write_json


def planted_items(n: int, dim: int, collab_dim: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Items ``(n, dim)`` from 32 semantic clusters, collaborative embeddings ``(n, collab_dim)`` from 64 groups
    that cut across the clusters, and each item's group ``(n,)``."""
    g = torch.Generator().manual_seed(seed)
    cat = torch.randint(32, (n,), generator=g)
    group = torch.randint(64, (n,), generator=g)
    x = 2.0 * torch.randn(32, dim, generator=g)[cat] + 0.5 * torch.randn(64, dim, generator=g)[group]
    x = x + torch.randn(n, dim, generator=g)
    collab = 3.0 * torch.randn(64, collab_dim, generator=g)[group] + 0.3 * torch.randn(n, collab_dim, generator=g)
    return x, collab, group


def planted_sequences(group: Tensor, users: int, seed: int) -> Dataset:
    """Users who each browse one collaborative group: 6-12 items drawn from it."""
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(group.numpy() == k) for k in range(int(group.max()) + 1)]
    seqs = []
    for _ in range(users):
        pool = members[rng.integers(len(members))]
        seqs.append(rng.choice(pool, size=int(rng.integers(6, 13)), replace=True).astype(np.int64))
    n = len(group)
    return Dataset("planted", [str(i) for i in range(n)], [f"u{u}" for u in range(users)], seqs)


def unit_rows(x: Tensor, blocks: tuple[int, ...]) -> Tensor:
    """``x (n, sum(blocks))`` with each block of columns L2-normalised per row, as the pipeline's embeddings."""
    return torch.cat([F.normalize(b, dim=1) for b in x.split(list(blocks), dim=1)], dim=1)


def grad_norm(term: Tensor, params: list[Tensor]) -> float:
    grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
    return math.sqrt(sum(float(g.pow(2).sum()) for g in grads if g is not None))


def mean_norms(samples: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([s[k] for s in samples])) for k in samples[0]}


def letter(before: bool, seed: int) -> dict[str, float]:
    x, collab, _ = planted_items(4096, 448, 32, seed)
    if not before:  # Beauty's 384-d text + 64-d co-occurrence blocks, and the preset's unit collaborative rows
        x, collab = unit_rows(x, (384, 64)), F.normalize(collab, dim=1)
    cfg = LetterConfig(reduction="sum" if before else "mean", standardize=before, epochs=20, batch_size=1024,
                       alpha=0.02, div_weight=1e-4)
    tok = Letter(cfg, 448).fit(x, collab=collab, seed=seed, device="cpu", progress=False).train()
    gen = torch.Generator().manual_seed(seed)
    tok.begin_epoch(gen)
    enc = list(tok.encoder.parameters())
    books = [tok.quantizer.codebooks]
    out = []
    for b in range(4):
        items = torch.arange(b * 1024, (b + 1) * 1024)
        t = tok.assign(x[items], items=items, generator=gen).terms
        out.append({"L_Sem @ encoder": grad_norm(t["recon"] + t["rq"], enc),
                    "alpha L_CF @ encoder": grad_norm(t["cf"], enc),
                    "rq @ codebooks": grad_norm(t["rq"], books),
                    "beta L_Div @ codebooks": grad_norm(t["div"], books)})
    return mean_norms(out)


def cost(before: bool, seed: int) -> dict[str, float]:
    x, _, _ = planted_items(4096, 448, 32, seed)
    x = x if before else unit_rows(x, (384, 64))
    # before: CoST's old default reduced L_rq to a mean over d but summed the MSE; "sum" sums both, which only
    # changes L_rq (not in CoST's row)
    cfg = CoSTConfig(reduction="sum" if before else "mean", recon="mse+contrastive", epochs=20, batch_size=1024)
    tok = CoST(cfg, 448).fit(x, seed=seed, device="cpu", progress=False).train()
    params = list(tok.encoder.parameters()) + list(tok.decoder.parameters())
    out = []
    for b in range(4):
        t = tok.assign(x[b * 1024 : (b + 1) * 1024]).terms
        out.append({"MSE @ encoder+decoder": grad_norm(t["recon"], params),
                    "alpha L_cl @ encoder+decoder": grad_norm(t["cl"], params)})
    return mean_norms(out)


def joint_setup(tok_cls, tok_cfg, model_cls, model_cfg, seed: int, unit: bool):
    """A tokenizer pre-fitted on 256-d planted items (rows L2-normalised when ``unit``), a recommender trained 20
    steps on its SIDs, and the split."""
    x, _, group = planted_items(2048, 256, 32, seed)
    x = unit_rows(x, (256,)) if unit else x
    split = leave_one_out(planted_sequences(group, 2000, seed), max_history=10)
    tok = tok_cls(tok_cfg, 256).fit(x, seed=seed, device="cpu", progress=False)
    torch.manual_seed(seed)
    model = model_cls(model_cfg)
    sids = semantic_ids_for(tok, x, model)
    set_phase(model, tok, "recommender")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rec_only = ScheduleConfig(name="alternating")
    rng = np.random.default_rng(seed)
    hist, users, target = (torch.as_tensor(a) for a in (split.train.history, split.train.user, split.train.target))
    for _ in range(20):
        idx = torch.as_tensor(rng.choice(len(target), 256, replace=False))
        loss = joint_losses(model, tok, x, sids, hist[idx], users[idx], target[idx], rec_only, aligned=False)
        opt.zero_grad()
        loss["total"].backward()
        opt.step()
    return tok, model, x, sids, (hist, users, target), rng


def batches(data, rng, n: int = 3):
    hist, users, target = data
    for _ in range(n):
        idx = torch.as_tensor(rng.choice(len(target), 256, replace=False))
        yield hist[idx], users[idx], target[idx]


def etegrec(before: bool, seed: int) -> dict[str, float]:
    # after: configs/etegrec-beauty.yaml's tokenizer (mean reduction, not standardised, encoder 256-512-256-128)
    shape = dict(reduction="sum", standardize=True) if before else dict(reduction="mean", standardize=False,
                                                                         hidden_dims=[512, 256])
    tok_cfg = RQVAEConfig(num_levels=3, codebook_size=256, latent_dim=128, epochs=20, batch_size=1024, **shape)
    # dedup level of 256: not standardised, 20 epochs leave up to ~80 items on one code tuple (levels 2-3 nearly
    # collapse; docs/results.md, "Fidelity to the reference code")
    model_cfg = ETEGRecConfig(level_sizes=[256, 256, 256, 256], max_history=10, latent_dim=128, recon_dim=256,
                              num_encoder_layers=2, num_decoder_layers=2)
    tok, model, x, sids, data, rng = joint_setup(RQVAE, tok_cfg, ETEGRec, model_cfg, seed, unit=not before)
    # 738ce40: mu 3e-4, lambda 1e-4 (the paper's text); now the defaults, 1e-4 and 3e-4 (ETEGRec's code)
    losses = LossesConfig(sia=SIAConfig(3e-4), psa=PSAConfig(1e-4)) if before else LossesConfig(sia=SIAConfig(),
                                                                                              psa=PSAConfig())
    sched = ScheduleConfig(name="alternating", losses=losses)
    mu, lam = losses.sia.weight, losses.psa.weight
    set_phase(model, tok, "tokenizer")
    params = [p for p in tok.parameters()]
    # 738ce40: L_SIA summed the L levels (now their mean, ETEGRec's batchmean); L_PSA halved the two directions
    sia_scale, psa_scale = (3.0, 0.5) if before else (1.0, 1.0)
    out = []
    for hist, users, target in batches(data, rng):
        t = joint_losses(model, tok, x, sids, hist, users, target, sched, aligned=True)
        out.append({"L_SQ @ tokenizer": grad_norm(t["sq"], params),
                    "mu L_SIA @ tokenizer": sia_scale * grad_norm(mu * t["sia"], params),
                    "lambda L_PSA @ tokenizer": psa_scale * grad_norm(lam * t["psa"], params)})
    return mean_norms(out)


def soda(before: bool, seed: int) -> dict[str, float]:
    tok_cfg = RQVAEConfig(num_levels=3, codebook_size=256, latent_dim=128, reduction="sum" if before else "mean",
                          epochs=20, batch_size=1024)
    model_cfg = TigerConfig(level_sizes=[256, 256, 256, 64], max_history=10, num_encoder_layers=2,
                            num_decoder_layers=2)
    tok, model, x, sids, data, rng = joint_setup(RQVAE, tok_cfg, Tiger, model_cfg, seed, unit=not before)
    # before: raw logits (minus squared distances, the recommender's as they are); after: per-level normalised
    soda_cfg = SODAConfig(weight=0.1, normalize=not before)
    sched = ScheduleConfig(name="alternating", losses=LossesConfig(soda=soda_cfg))
    set_phase(model, tok, "tokenizer")
    params = [p for p in tok.parameters()]
    out = []
    for hist, users, target in batches(data, rng):
        t = joint_losses(model, tok, x, sids, hist, users, target, sched, aligned=True)
        out.append({"L_SQ @ tokenizer": grad_norm(t["sq"], params),
                    "gamma L_SODA @ tokenizer": grad_norm(soda_cfg.weight * t["soda"], params)})
    return mean_norms(out)


def diger(before: bool, seed: int) -> dict[str, float]:
    # soft codes (ours) on raw distances (sk_epsilon 0): on the reference's centred distances the soft path carries
    # ~1e-4 of L_SQ's gradient (docs/results.md, "Fidelity to the reference code"), and the presets use hard codes
    tok_cfg = DIGERConfig(num_levels=3, codebook_size=256, latent_dim=128, reduction="sum" if before else "mean",
                          epochs=20, batch_size=1024, decay="sdud", sk_epsilon=0.0)
    model_cfg = ETEGRecConfig(level_sizes=[256, 256, 256, 64], max_history=10, latent_dim=128, recon_dim=256,
                              num_encoder_layers=2, num_decoder_layers=2)
    tok, model, x, sids, data, rng = joint_setup(DIGER, tok_cfg, ETEGRec, model_cfg, seed, unit=not before)
    sched = ScheduleConfig(name="joint", soft_codes=True)
    set_phase(model, tok, "joint")
    books = [tok.quantizer.codebooks]
    out = []
    for hist, users, target in batches(data, rng):
        t = joint_losses(model, tok, x, sids, hist, users, target, sched, aligned=True)
        out.append({"L_SQ @ codebooks": grad_norm(t["sq"], books),
                    "L_REC (SDUD-wrapped) @ codebooks": grad_norm(tok.wrap_task_loss(t["rec"]), books)})
    return mean_norms(out)


METHODS = {"letter": letter, "cost": cost, "etegrec": etegrec, "soda": soda, "diger": diger}
# (method, added term, main term): the rows of the table
ROWS = [("letter", "alpha L_CF @ encoder", "L_Sem @ encoder"), ("letter", "beta L_Div @ codebooks", "rq @ codebooks"),
        ("cost", "alpha L_cl @ encoder+decoder", "MSE @ encoder+decoder"),
        ("etegrec", "mu L_SIA @ tokenizer", "L_SQ @ tokenizer"),
        ("etegrec", "lambda L_PSA @ tokenizer", "L_SQ @ tokenizer"),
        ("soda", "gamma L_SODA @ tokenizer", "L_SQ @ tokenizer"),
        ("diger", "L_REC (SDUD-wrapped) @ codebooks", "L_SQ @ codebooks")]


def table(results: dict) -> str:
    lines = ["| method | added term (weighted) | main term | before (738ce40): added / main | after (issue 22): added / "
             "main |",
             "| --- | --- | --- | --- | --- |"]
    for method, added, main in ROWS:
        cells = []
        for when in ("before", "after"):
            r = results[method][when]
            cells.append(f"{r[added]:.3g} / {r[main]:.3g} = **{r[added] / r[main]:.3g}**")
        lines.append(f"| {method} | {added} | {main} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict = {}
    for name in args.methods:
        t0 = time.perf_counter()
        results[name] = {"before": METHODS[name](True, args.seed), "after": METHODS[name](False, args.seed)}
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "loss_balance.json", {"seed": args.seed, "results": results})
    if set(args.methods) == set(METHODS):
        print(table(results))
    else:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
