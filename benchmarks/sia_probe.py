"""ETEGRec's L_SIA as its code computes it against the paper's formula (issue 22, item 3): gradient sizes and effect.

ETEGRec's ``vq.py`` scores codes by ``+squared distance`` (``logit = d``; the paper: ``softmax(-distance)``), and its
residuals after level 0 carry no gradient (it subtracts the straight-through quantisation, ``r - (r + sg(e - r))``),
so L_SIA moves z and z_E through level 0 only. Four variants of the scores, {+d, -d} x {straight-through residuals,
residuals with gradient to z and earlier codewords (our code before issue 22)}, on the tokenizer sizes of
``benchmarks/loss_balance.py`` (256-d planted items, 3 x 256 codes, latent 128, ETEGRec recommender d_model 128 with
2 + 2 layers trained 20 steps) at mu = 1e-4:

- ``tok ratio``: |grad of mu L_SIA| / |grad of L_SQ| at the tokenizer, and the share of it at the encoder;
- ``rec ratio``: |grad of mu L_SIA| / |grad of L_REC| at the recommender;
- ``agree``: after 20 tokenizer-phase AdamW steps (lr 1e-3) of L_SQ + w L_SIA, the share of held-out rows whose
  z_E has the target's level-1 code (nearest codeword), for w = mu and w = 100 mu (to show the direction), next
  to L_SQ alone.

The items' rows are L2-normalised (as the pipeline's embeddings) and not standardised (ETEGRec's code). A second
table fits the same tokenizer with and without input standardisation (``RQVAEConfig.standardize``) and gives the
mean top probability of the items' level-1 code distributions softmax(-distance) and the reference L_SIA's and
L_PSA's gradient ratios at the tokenizer.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/sia_probe.py --out benchmarks/results

Writes ``<out>/sia_probe.json``; ~17 min on one core shared with other work. The recommender's dedup level holds 256
items, as the unstandardised fit gives large SID groups.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from loss_balance import batches, grad_norm, planted_items, planted_sequences  # benchmarks/loss_balance.py

from sidrec.config import ScheduleConfig
from sidrec.data.splits import leave_one_out
from sidrec.eval.evaluate import model_inputs
from sidrec.models.etegrec import ETEGRec, ETEGRecConfig
from sidrec.tokenizers import RQVAE, RQVAEConfig, codebook_health
from sidrec.training.losses import LossesConfig, PSAConfig, SIAConfig, sia_loss
from sidrec.training.schedules import joint_losses, semantic_ids_for, set_phase
from sidrec.utils import atomic_write_json

MU = 1e-4


def setup(standardize: bool, seed: int):
    """``loss_balance.joint_setup`` on L2-normalised rows: an RQ-VAE (3 x 256, latent 128) fitted 20 epochs, an
    ETEGRec recommender (d_model 128, 2 + 2 layers) trained 20 steps on its SIDs, and the split."""
    x, _, group = planted_items(2048, 256, 32, seed)
    x = torch.nn.functional.normalize(x, dim=1)
    split = leave_one_out(planted_sequences(group, 2000, seed), max_history=10)
    tok_cfg = RQVAEConfig(num_levels=3, codebook_size=256, latent_dim=128, reduction="mean", epochs=20,
                          batch_size=1024, standardize=standardize)
    tok = RQVAE(tok_cfg, 256).fit(x, seed=seed, device="cpu", progress=False)
    torch.manual_seed(seed)
    model = ETEGRec(ETEGRecConfig(level_sizes=[256, 256, 256, 256], max_history=10, latent_dim=128, recon_dim=256,
                                  num_encoder_layers=2, num_decoder_layers=2))
    sids = semantic_ids_for(tok, x, model)
    set_phase(model, tok, "recommender")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    data = tuple(torch.as_tensor(a) for a in (split.train.history, split.train.user, split.train.target))
    for hist, users, target in batches(data, rng, 20):
        loss = joint_losses(model, tok, x, sids, hist, users, target, ScheduleConfig(name="alternating"),
                            aligned=False)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return tok, model, x, sids, data, rng


def standardisation(seed: int) -> dict:
    """Top probability of the items' level-1 distributions and the alignment gradients, standardised or not."""
    sched = ScheduleConfig(name="alternating", losses=LossesConfig(sia=SIAConfig(), psa=PSAConfig()))
    out = {}
    for standardize in (True, False):
        tok, model, x, sids, data, rng = setup(standardize, seed)
        set_phase(model, tok, "tokenizer")
        params = list(tok.parameters())
        top, sia_r, psa_r = [], [], []
        for hist, users, target in batches(data, rng, 3):
            t = joint_losses(model, tok, x, sids, hist, users, target, sched, aligned=True)
            main = grad_norm(t["sq"], params)
            sia_r.append(grad_norm(sched.losses.sia.weight * t["sia"], params) / main)
            psa_r.append(grad_norm(sched.losses.psa.weight * t["psa"], params) / main)
            with torch.no_grad():
                top.append(float(tok.assign(x[target]).logits[:, 0].softmax(-1).max(-1).values.mean()))
        health = codebook_health(tok.encode(x), 256)
        out[f"standardize={standardize}"] = {"top_probability_level1": float(np.mean(top)),
                                             "usage": health["usage"], "max_group": health["max_group"],
                                             "sia_ratio": float(np.mean(sia_r)), "psa_ratio": float(np.mean(psa_r)),
                                             "input_scale": tok.input_scale(x)}
        print(standardize, json.dumps(out[f"standardize={standardize}"]), flush=True)
    return out


def scores(tok, z: torch.Tensor, sign: float, straight_through: bool) -> torch.Tensor:
    """(B, L, K) code scores of latents z: sign * squared distance, residuals straight-through or not."""
    if straight_through:
        return sign * tok.quantizer.straight_through_distances(z)
    return -sign * tok.quantizer.logits(z)  # logits = -distance, residuals with gradient


def sia(model, tok, x, sids, hist, users, target, sign: float, st: bool) -> tuple[torch.Tensor, dict]:
    ids, mask = model_inputs(model, sids, hist, users)
    enc, dec = model.hidden_states(ids, mask, sids[target])
    z_e = model.sequence_latent(enc, mask).float()
    a = tok.assign(x[target])
    loss = sia_loss(scores(tok, z_e, sign, st), scores(tok, a.latent, sign, st), target)
    return loss, {"z_e": z_e, "a": a, "dec": dec}


def agreement(model, tok, x, sids, hist, users, target) -> float:
    """Share of rows whose sequence latent's nearest level-1 codeword is the target's level-1 code."""
    with torch.no_grad():
        ids, mask = model_inputs(model, sids, hist, users)
        enc, _ = model.hidden_states(ids, mask, sids[target])
        z_e = model.sequence_latent(enc, mask).float()
        return float((tok.quantizer.encode(z_e)[:, 0] == tok.encode(x[target])[:, 0]).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    tok, model, x, sids, data, rng = setup(False, args.seed)
    plain = ScheduleConfig(name="alternating")
    held = next(batches(data, rng, 1))
    train = list(batches(data, rng, 20))
    variants = {"reference (+d, straight-through)": (1.0, True), "paper sign (-d), straight-through": (-1.0, True),
                "+d, full gradient path": (1.0, False), "ours before (-d, full gradient path)": (-1.0, False)}
    results: dict = {"agree L_SQ only": None}
    state = {k: v.clone() for k, v in tok.state_dict().items()}

    def tokenizer_run(weight: float, sign: float, st: bool) -> float:
        tok.load_state_dict(state)
        set_phase(model, tok, "tokenizer")
        opt = torch.optim.AdamW(tok.parameters(), lr=1e-3)
        for hist, users, target in train:
            loss = joint_losses(model, tok, x, sids, hist, users, target, plain, aligned=True)["total"]
            if weight > 0:
                loss = loss + weight * sia(model, tok, x, sids, hist, users, target, sign, st)[0]
            opt.zero_grad()
            loss.backward()
            opt.step()
        tok.eval()
        agree = agreement(model, tok, x, sids, *held)
        tok.load_state_dict(state)
        return agree

    results["agree L_SQ only"] = tokenizer_run(0.0, 1.0, True)
    for name, (sign, st) in variants.items():
        tok_r, enc_share, rec_r = [], [], []
        for hist, users, target in batches(data, rng, 3):
            set_phase(model, tok, "tokenizer")
            loss, _ = sia(model, tok, x, sids, hist, users, target, sign, st)
            sq = joint_losses(model, tok, x, sids, hist, users, target, plain, aligned=True)["sq"]
            params = list(tok.parameters())
            g = grad_norm(MU * loss, params)
            tok_r.append(g / grad_norm(sq, params))
            enc_share.append(grad_norm(MU * loss, list(tok.encoder.parameters())) / g)
            set_phase(model, tok, "recommender")
            loss, _ = sia(model, tok, x, sids, hist, users, target, sign, st)
            rec = joint_losses(model, tok, x, sids, hist, users, target, plain, aligned=False)["rec"]
            mparams = [p for p in model.parameters() if p.requires_grad]
            rec_r.append(grad_norm(MU * loss, mparams) / grad_norm(rec, mparams))
        results[name] = {"tok ratio": sum(tok_r) / 3, "encoder share": sum(enc_share) / 3, "rec ratio": sum(rec_r) / 3,
                         "agree mu": tokenizer_run(MU, sign, st), "agree 100 mu": tokenizer_run(100 * MU, sign, st)}
        print(name, json.dumps(results[name]), flush=True)
    results["standardisation"] = standardisation(args.seed)
    results["seconds"] = time.perf_counter() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "sia_probe.json", {"seed": args.seed, "mu": MU, "results": results})
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
