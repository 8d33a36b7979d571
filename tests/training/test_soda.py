"""SODA and ETEGRec's alignment losses: values, directions, negatives, and where their gradients go."""

import pytest
import torch

from conftest import write_recbole
from sidrec.data.loaders import load_dataset
from sidrec.data.splits import leave_one_out
from sidrec.models.tiger import Tiger, TigerConfig
from sidrec.tokenizers import RQVAE, RQVAEConfig
from sidrec.training.config import ScheduleConfig
from sidrec.training.losses import (
    LossesConfig,
    SIAConfig,
    SODAConfig,
    kl_matrix,
    psa_loss,
    sia_loss,
    soda_candidates,
    soda_loss,
    soda_scores,
)
from sidrec.training.schedules import joint_losses, semantic_ids_for, set_phase


def test_kl_matrix_matches_the_definition():
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(3, 2, 5, generator=g), torch.randn(4, 2, 5, generator=g)
    ref = torch.zeros(3, 4)
    for a in range(3):
        for b in range(4):
            lp, lq = p[a].log_softmax(-1), q[b].log_softmax(-1)
            ref[a, b] = (lp.exp() * (lp - lq)).sum()
    assert torch.allclose(kl_matrix(p, q), ref, atol=1e-5)
    assert torch.allclose(soda_scores(p, q, "reverse"), -kl_matrix(q, p).T)
    assert torch.allclose(soda_scores(p, q, "symmetric"), -ref - kl_matrix(q, p).T, atol=1e-5)


@pytest.mark.parametrize("direction", ["forward", "reverse", "symmetric"])
def test_soda_is_lower_when_the_positive_matches_the_user(direction):
    g = torch.Generator().manual_seed(1)
    user = torch.randn(1, 3, 8, generator=g) * 3
    other = torch.randn(1, 3, 8, generator=g) * 3
    items = torch.tensor([10, 20])
    target = torch.tensor([10])
    negative = torch.tensor([[False, True]])
    matched = soda_loss(user, torch.cat([user, other]), items, target, negative, direction)
    swapped = soda_loss(user, torch.cat([other, user]), items, target, negative, direction)
    assert matched < 0.1 < swapped  # the positive's distribution equals the user's: score 0, the best possible


def test_soda_candidates_and_negatives():
    target = torch.tensor([3, 5, 3])
    cands, neg = soda_candidates(target, 100, SODAConfig(sampled=4), torch.Generator().manual_seed(0))
    assert cands[:2].tolist() == [3, 5] and len(cands) == 6
    assert not neg[0, 0] and neg[0, 1] and not neg[1, 1] and neg[2, 1]  # never its own target
    cands, neg = soda_candidates(target, 100, SODAConfig(in_batch=False, sampled=4),
                                 torch.Generator().manual_seed(0))
    assert not neg[:, :2].any() and neg[:, 2:].sum() >= 9  # only sampled negatives (minus hits on the target)
    with pytest.raises(ValueError, match="needs negatives"):
        SODAConfig(in_batch=False, sampled=0)


def test_sia_is_zero_for_equal_distributions_and_symmetric():
    x = torch.randn(4, 3, 6)
    y = torch.randn(4, 3, 6)
    target = torch.arange(4)
    assert sia_loss(x, x, target).abs() < 1e-6
    assert torch.allclose(sia_loss(x, y, target), sia_loss(y, x, target))
    assert sia_loss(x, y, target) > 0
    # a repeated target counts once (ETEGRec's code keeps the first row of each unique target)
    repeated = torch.tensor([0, 1, 2, 0])
    assert torch.allclose(sia_loss(x, y, repeated), sia_loss(x[:3], y[:3], repeated[:3]))


def test_psa_rewards_aligned_pairs_and_ignores_repeated_targets():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 8, generator=g)
    target = torch.tensor([0, 1, 2, 3])
    aligned = psa_loss(z, z, target, tau=0.07)
    shuffled = psa_loss(z.roll(1, 0), z, target, tau=0.07)
    assert aligned < shuffled
    repeated = torch.tensor([0, 1, 1, 2])  # row 2 repeats row 1's target and is dropped
    assert torch.allclose(psa_loss(z, z, repeated, 0.07), psa_loss(z[[0, 1, 3]], z[[0, 1, 3]],
                                                                   torch.tensor([0, 1, 2]), 0.07))


def _tiny(tmp_path, latent_dim=0):
    ds = load_dataset("recbole", write_recbole(tmp_path / "data", num_users=20, num_items=16))
    split = leave_one_out(ds, max_history=4)
    emb = torch.randn(ds.num_items, 6, generator=torch.Generator().manual_seed(0))
    cfg = RQVAEConfig(num_levels=2, codebook_size=4, latent_dim=4, hidden_dims=[8], epochs=2, batch_size=16)
    tok = RQVAE(cfg, input_dim=6).fit(emb, seed=0, device="cpu", progress=False)
    tok.zero_grad(set_to_none=True)
    model = Tiger(TigerConfig(level_sizes=[4, 4, 16], max_history=4, d_model=16, num_heads=2, d_kv=8, d_ff=32,
                              num_encoder_layers=1, num_decoder_layers=1, user_buckets=0, latent_dim=latent_dim))
    batch = [torch.as_tensor(a[:8]) for a in (split.train.history, split.train.user, split.train.target)]
    return model, tok, emb, batch


def _codebook_grad(tmp_path, schedule, phase, aligned=True, term="total", latent_dim=0):
    model, tok, emb, batch = _tiny(tmp_path, latent_dim)
    sids = semantic_ids_for(tok, emb, model)
    set_phase(model, tok, phase)
    out = joint_losses(model, tok, emb, sids, *batch, schedule, aligned)
    if out[term].requires_grad:
        out[term].backward()
    grad = tok.quantizer.codebooks.grad
    return 0.0 if grad is None else float(grad.abs().sum()), model


SODA = LossesConfig(soda=SODAConfig(weight=1.0, sampled=4))


@pytest.mark.parametrize("source", ["recommender", "latent"])
def test_soda_gradient_reaches_the_codebooks_in_the_tokenizer_phase(tmp_path, source):
    losses = LossesConfig(soda=SODAConfig(weight=1.0, user_source=source))
    grad, _ = _codebook_grad(tmp_path, ScheduleConfig(name="alternating", losses=losses), "tokenizer",
                             term="soda", latent_dim=4 if source == "latent" else 0)
    assert grad > 0


def test_soda_gradient_is_off_without_soda_during_warmup_and_in_two_stage(tmp_path):
    alternating = ScheduleConfig(name="alternating", losses=SODA)
    # switched off: no SODA term (warm-up) -> only L_SQ trains the tokenizer, and L_REC has no path to it
    grad, _ = _codebook_grad(tmp_path, alternating, "tokenizer", aligned=False, term="rec")
    assert grad == 0.0
    # two-stage: the tokenizer is frozen, SODA only trains the recommender
    grad, model = _codebook_grad(tmp_path, ScheduleConfig(losses=SODA), "recommender", term="soda")
    assert grad == 0.0
    assert model.heads[0].weight.grad.abs().sum() > 0


def test_sia_reaches_codebooks_and_the_latent_head(tmp_path):
    schedule = ScheduleConfig(name="joint", losses=LossesConfig(sia=SIAConfig(weight=1.0)))
    grad, model = _codebook_grad(tmp_path, schedule, "joint", term="sia", latent_dim=4)
    assert grad > 0 and model.latent_head[0].weight.grad.abs().sum() > 0


def test_soft_residuals_follow_expected_codewords(tmp_path):
    _, tok, emb, _ = _tiny(tmp_path)
    z = tok.assign(emb[:5]).latent
    rq = tok.quantizer
    soft = rq.soft_logits(z, tau=0.5)
    assert torch.allclose(soft[:, 0], rq.logits(z)[:, 0])  # level 0 sees z itself either way
    r1 = z - (soft[:, 0] / 0.5).softmax(-1) @ rq.codebooks[0]
    assert torch.allclose(soft[:, 1], -torch.cdist(r1, rq.codebooks[1]).pow(2), atol=1e-4)
    losses = LossesConfig(soda=SODAConfig(weight=1.0, soft_residuals=True))
    grad, _ = _codebook_grad(tmp_path, ScheduleConfig(name="alternating", losses=losses), "tokenizer", term="soda")
    assert grad > 0
