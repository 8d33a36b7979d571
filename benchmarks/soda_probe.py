"""SODA in the tokenizer phase on real data (issue 22): does its score rank a user's next item above the others?

MovieLens-100K at the demo's scale (``configs/ml-100k-demo.yaml``: MiniLM title/genre + co-occurrence embeddings,
its small TIGER, history 10), with an RQ-VAE of 3 x 64 codes (``reduction: mean``, as every tokenizer trained
with an alignment loss; 40 fit epochs). The recommender first trains ``--warmup`` epochs of ``--steps`` steps of
``--batch`` rows on the pre-trained tokenizer's SIDs (SODA off: the schedule's warm-up). Then, from that same state, each setting runs one tokenizer
phase of ``--steps`` steps (recommender frozen, loss L_SQ + gamma L_SODA, AdamW at the schedule's tokenizer lr) and
the win rate is measured on held-out batches, the validation examples (every user's second-to-last item, never
a training target of that row): the share of (user, in-batch negative) pairs with s(u, i+) > s(u, i-), the
score ``-sum_l KL(P_u^l || P_i^l)`` that L_SODA trains, at the setting's own scale. Also reported: the gradient
norm of gamma L_SODA over L_SQ's at the tokenizer on the phase's first batch.

Settings: ``raw`` = the scale before issue 22 (recommender logits as they are, minus squared distances / tau),
gamma 0.1; ``level`` = the per-level normalisation (``SODAConfig.normalize``) at gamma 0.001 .. 0.1; and gamma 0
(L_SQ alone) as the control.

    OMP_NUM_THREADS=1 SIDREC_DATA=/work/shared/data PYTHONPATH=. python benchmarks/soda_probe.py --out benchmarks/results

Writes ``<out>/soda_probe.json``; the warmed-up recommender is kept in the run directory, so a second call skips
the warm-up. 8 minutes on a CPU shared with other jobs.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sidrec.config import load_config
from sidrec.data.splits import leave_one_out
from sidrec.eval.evaluate import model_inputs, trim_padding
from sidrec.pipeline import Run
from sidrec.tokenizers import load_sids, load_tokenizer
from sidrec.training.config import ScheduleConfig
from sidrec.training.losses import LossesConfig, SODAConfig, level_normalized, soda_scores
from sidrec.training.schedules import joint_losses, semantic_ids_for, set_phase
from sidrec.utils import adamw, atomic_write_json

OVERRIDES = [
    "tokenizer.name=rqvae",
    "tokenizer.params={num_levels: 3, codebook_size: 64, reduction: mean, epochs: 40}",
]


def win_rate(model, tok, x, sids, valid, soda: SODAConfig, batch: int = 256) -> float:
    """Share of (user, in-batch negative) pairs of the validation examples where the positive scores higher."""
    wins = pairs = 0.0
    with torch.no_grad():
        for lo in range(0, len(valid.target), batch):
            hist = trim_padding(torch.as_tensor(valid.history[lo:lo + batch]))
            users, target = torch.as_tensor(valid.user[lo:lo + batch]), torch.as_tensor(valid.target[lo:lo + batch])
            ids, mask = model_inputs(model, sids, hist, users)
            _, dec = model.hidden_states(ids, mask, sids[target])
            user = torch.stack(model.all_level_logits(dec)[:3], 1)  # (B, L, K) teacher-forced
            uniq = torch.unique(target)
            items = tok.assign(x[uniq]).logits  # (M, L, K), eval mode: nearest codes
            if soda.normalize:
                user, items = level_normalized(user, soda.tau), level_normalized(items, soda.tau)
            else:
                items = items / soda.tau
            scores = soda_scores(user, items, soda.direction)  # (B, M)
            pos_col = torch.searchsorted(uniq, target)  # (B,) column of each row's positive
            pos = scores.gather(1, pos_col[:, None])  # (B, 1)
            neg = uniq[None, :] != target[:, None]  # (B, M)
            wins += float(((pos > scores) & neg).sum())
            pairs += float(neg.sum())
    return wins / pairs


def grad_ratio(out: dict, weight: float, params: list) -> float:
    def norm(term):
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        return math.sqrt(sum(float(g.pow(2).sum()) for g in grads if g is not None))
    return norm(weight * out["soda"]) / norm(out["sq"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--run-dir", default="runs/soda-probe")
    parser.add_argument("--warmup", type=int, default=2, help="recommender epochs before the tokenizer phase")
    parser.add_argument("--steps", type=int, default=50, help="steps per warm-up epoch and per tokenizer phase")
    parser.add_argument("--batch", type=int, default=128, help="rows per step")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    start = time.time()
    cfg = load_config("configs/ml-100k-demo.yaml", [*OVERRIDES, f"run_dir={args.run_dir}", f"seed={args.seed}"])
    run = Run(cfg, progress=False, log=lambda *_: None)
    ds = run.stage_prepare()
    emb = run.stage_embed(ds)
    run.stage_tokenize(emb)
    _, level_sizes = load_sids(run.run.tokenizer)
    tok = load_tokenizer(run.run.tokenizer)
    x = torch.as_tensor(emb, dtype=torch.float32)
    split = leave_one_out(ds, cfg.data.max_history)
    level_sizes = level_sizes[:-1] + [max(2 * level_sizes[-1], tok.codebook_size)]
    torch.manual_seed(args.seed)
    model = run._new_model(level_sizes, split.max_history)
    sids = semantic_ids_for(tok, x, model)
    train = [torch.as_tensor(a) for a in (split.train.history, split.train.user, split.train.target)]
    gen = torch.Generator().manual_seed(args.seed)

    def batches(n: int):
        for _ in range(n):
            idx = torch.randint(len(train[2]), (args.batch,), generator=gen)
            yield tuple(t[idx] for t in train)

    plain = ScheduleConfig(name="alternating")
    set_phase(model, tok, "recommender")
    opt = adamw(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    rec_loss = []
    warm = Path(args.run_dir) / f"probe_warm_{args.warmup}x{args.steps}x{args.batch}_seed{args.seed}.safetensors"
    if warm.exists():  # the same warm-up of an earlier call (deterministic on CPU): skip it
        model.load_state_dict(load_file(str(warm)))
        rec_loss = [float("nan")] * 2
    for _ in range(0 if warm.exists() else args.warmup):
        for hist, users, target in batches(args.steps):
            loss = joint_losses(model, tok, x, sids, hist, users, target, plain, aligned=False)["total"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec_loss.append(float(loss.detach()))
        print(f"warm-up epoch: rec loss {rec_loss[-1]:.3f} at {time.time() - start:.0f} s", flush=True)
    if not warm.exists():
        save_file(model.state_dict(), str(warm))
    model.eval()
    rec_state, tok_state = model.state_dict(), {k: v.clone() for k, v in tok.state_dict().items()}
    settings = [("raw", False, 0.1), ("level", True, 0.0), ("level", True, 0.001), ("level", True, 0.01),
                ("level", True, 0.1)]
    rows = []
    print(f"warm-up done at {time.time() - start:.0f} s", flush=True)
    for scale, normalize, gamma in settings:
        tok.load_state_dict(tok_state)
        model.load_state_dict(rec_state)
        soda = SODAConfig(weight=gamma, normalize=normalize)
        sched = ScheduleConfig(name="alternating", losses=LossesConfig(soda=soda))
        tok.eval()
        before = win_rate(model, tok, x, sids, split.valid, soda)
        set_phase(model, tok, "tokenizer")
        topt = adamw(list(tok.parameters()), lr=sched.tokenizer_lr, weight_decay=0.0)
        ratio, soda_loss, sq_loss = None, [], []
        gen.manual_seed(args.seed + 1)  # the same batches for every setting
        torch.manual_seed(args.seed + 1)
        for hist, users, target in batches(args.steps):
            out = joint_losses(model, tok, x, sids, hist, users, target, sched, aligned=True)
            if ratio is None and gamma > 0:
                ratio = grad_ratio(out, gamma, [p for p in tok.parameters() if p.requires_grad])
            topt.zero_grad()
            out["total"].backward()
            topt.step()
            soda_loss.append(float(out["soda"].detach()))
            sq_loss.append(float(out["sq"].detach()))
        tok.eval()
        after = win_rate(model, tok, x, sids, split.valid, soda)
        row = dict(scale=scale, gamma=gamma, win_rate_before=round(before, 4), win_rate_after=round(after, 4),
                   grad_ratio_soda_over_sq=None if ratio is None else round(ratio, 4),
                   soda_loss_first_last=[round(soda_loss[0], 4), round(soda_loss[-1], 4)],
                   sq_loss_first_last=[round(sq_loss[0], 4), round(sq_loss[-1], 4)])
        rows.append(row)
        print(row, flush=True)
    result = dict(dataset="ml-100k", config="configs/ml-100k-demo.yaml", overrides=OVERRIDES, seed=args.seed,
                  warmup_epochs=args.warmup, steps=args.steps, batch_size=args.batch,
                  rec_loss_first_last=[round(rec_loss[0], 4), round(rec_loss[-1], 4)],
                  held_out="validation examples (943 users), in-batch negatives, batches of 256",
                  torch_threads=torch.get_num_threads(), seconds=round(time.time() - start, 1), rows=rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "soda_probe.json", result)
    print(f"wrote {out / 'soda_probe.json'} in {result['seconds']} s")


if __name__ == "__main__":
    main()
