import math

import pytest
import torch
import torch.nn.functional as F

from sidrec.tokenizers import DIGER, RQVAE, DIGERConfig, RQVAEConfig, build_tokenizer, load_tokenizer
from sidrec.tokenizers.diger import gumbel_noise
from sidrec.tokenizers.kmeans import squared_distances
from sidrec.tokenizers.residual import sinkhorn_codes

K, L, D = 8, 3, 12
BASE = dict(num_levels=L, codebook_size=K, latent_dim=4, hidden_dims=[16], batch_size=64, epochs=3)
# sk_epsilon 0: argmin codes and raw distances, the plain path most tests replay (Sinkhorn: its own test)
DBASE = {**BASE, "sk_epsilon": 0.0}


def items(n: int = 96, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    centres = 2 * torch.randn(K, D, generator=gen)
    return centres[torch.arange(n) % K] + 0.5 * torch.randn(n, D, generator=gen)


def fitted(**overrides) -> DIGER:
    return DIGER(DIGERConfig(**{**DBASE, **overrides}), input_dim=D).fit(
        items(), seed=0, device="cpu", progress=False
    )


def rec_loss(onehot: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """Stand-in for L_REC: code embeddings read as onehot @ table, scored against a random target."""
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(L, K, 5, generator=gen)  # (L, K, h)
    target = torch.randn(onehot.shape[0], L, 5, generator=gen)  # (B, L, h)
    return (torch.einsum("blk,lkh->blh", onehot, table) * target).sum()


def test_gumbel_onehot_carries_the_rec_gradient_to_every_codeword_of_every_level():
    model = fitted(decay="none").train()
    x = items(4, seed=1)  # 4 items choose at most 4 of the 8 codewords per level
    a = model.assign(x, generator=torch.Generator().manual_seed(0))
    assert a.codes.shape == (4, L) and a.onehot.shape == a.logits.shape == (4, L, K)
    # Forward value: an exact one-hot of the codes, and quantized is the sum of the chosen codewords.
    assert torch.allclose(a.onehot, F.one_hot(a.codes, K).float(), atol=1e-6)
    assert torch.allclose(a.quantized, model.quantizer.lookup(a.codes), atol=1e-5)
    (grad,) = torch.autograd.grad(rec_loss(a.onehot), model.quantizer.codebooks, retain_graph=True)
    # Every codeword of every level gets a gradient, chosen or not: it flows through y_soft.
    assert (grad.abs().sum(-1) > 0).all(), grad.abs().sum(-1)
    # The next level's residual is r - Ind . E, so level 2's distances depend on every level-1 codeword too.
    (grad,) = torch.autograd.grad(a.logits[:, 1].sum(), model.quantizer.codebooks)
    assert (grad[0].abs().sum(-1) > 0).all()


def test_naive_straight_through_and_eval_mode_give_no_codebook_gradient_through_onehot():
    naive = fitted(gumbel=False, decay="none").train()
    gumbel = fitted(decay="none").eval()
    rqvae = RQVAE(RQVAEConfig(**BASE), input_dim=D).fit(items(), seed=0, device="cpu", progress=False).train()
    x = items(32, seed=1)
    for model in (naive, gumbel, rqvae):
        a = model.assign(x)
        assert not a.onehot.requires_grad
        assert torch.equal(a.onehot, F.one_hot(a.codes, K).float())
        # The vector path is z + sg(z_hat - z): the value is z_hat, the gradient goes to the encoder only.
        assert torch.allclose(a.quantized, model.quantizer.lookup(a.codes), atol=1e-5)
        grads = torch.autograd.grad(a.quantized.sum(), [model.quantizer.codebooks, model.encoder[0].weight],
                                    allow_unused=True)
        assert grads[0] is None and grads[1].abs().sum() > 0


def test_eval_codes_are_the_deterministic_argmin_and_training_codes_vary_with_noise():
    model = fitted(decay="none", noise_scale=5.0)
    x = items(64, seed=2)
    model.eval()
    a = model.assign(x, generator=torch.Generator().manual_seed(1))
    b = model.assign(x, generator=torch.Generator().manual_seed(2))
    z = model.encoder(model.standardize(x))
    assert torch.equal(a.codes, b.codes)
    assert torch.equal(a.codes, model.encode(x))
    assert torch.equal(a.codes, model.quantizer.encode(z))
    assert torch.allclose(a.logits[:, 0], -squared_distances(z, model.quantizer.codebooks[0]))
    model.train()
    c = model.assign(x, generator=torch.Generator().manual_seed(1))
    d = model.assign(x, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(c.codes, d.codes)
    assert not torch.equal(c.codes, a.codes)
    # Without noise the training assignment is the argmin too, still straight-through (deterministic ST).
    quiet = fitted(decay="none", noise_scale=0.0).train()
    e = quiet.assign(x)
    assert torch.equal(e.codes, model.encode(x))
    (grad,) = torch.autograd.grad(rec_loss(e.onehot), quiet.quantizer.codebooks)
    assert (grad.abs().sum(-1) > 0).any(dim=1).all()


def test_assignment_follows_the_gumbel_softmax_formula_and_balance_loss():
    model = fitted(decay="none", noise_scale=2.0, balance_weight=0.0).train()
    x = items(40, seed=3)
    a = model.assign(x, generator=torch.Generator().manual_seed(4))
    # Replay the same noise, level by level, through y_soft = softmax((-d + s * g) / tau_g).
    replay = torch.Generator().manual_seed(4)
    balance = 0.0
    for level in range(L):
        g = gumbel_noise((40, K), torch.device("cpu"), replay)
        y_soft = F.softmax((a.logits[:, level] + 2.0 * g) / 2.0, dim=1)
        assert torch.equal(y_soft.argmax(1), a.codes[:, level])
        balance += float((y_soft.mean(0) - 1 / K).abs().sum().detach())
    weighted = fitted(decay="none", noise_scale=2.0, balance_weight=0.5).train()
    b = weighted.assign(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.codes, b.codes)
    # reduction "mean" (DIGER's default): the levels' balance terms are averaged, as its L_SQ's levels
    assert float((b.loss - a.loss).detach()) == pytest.approx(0.5 * balance / L, rel=1e-4)


def test_frqud_perturbs_fewer_samples_as_usage_balances():
    model = DIGER(DIGERConfig(**DBASE, decay="frqud"), input_dim=D)
    skewed = torch.zeros(64, dtype=torch.long)  # every sample on code 0
    balanced = torch.arange(64) % K
    assert not model.hot(skewed).any()  # the EMA starts uniform (1 / K, below 1.5 / K), as the reference's
    ema = 1 / K
    for _ in range(50):  # code 0's EMA rises as 0.99 e + 0.01 past 1.5 / K after 8 skewed batches
        model.update_usage(skewed)
        ema = 0.99 * ema + 0.01
    assert int(model.hot(skewed).sum()) == 64
    counts = []
    for _ in range(400):
        counts.append(int(model.hot(balanced).sum()))  # read before the batch updates the EMA
        model.update_usage(balanced)
    # Reference: code 0's EMA decays as 0.99 e + 0.01 / K; it stays hot while above 1.5 / K; the other codes
    # rise from below 1 / K towards it and never become hot.
    expected = []
    for _ in range(400):
        expected.append(64 // K if ema > 1.5 / K else 0)
        ema = 0.99 * ema + 0.01 / K
    assert counts == expected
    assert counts[0] == 8 and counts[-1] == 0
    assert model.joint_stats() == {"noise.hot_codes": 0.0, "noise.perturbed": 0.0}
    assert int(model.usage_steps) == 450


def test_frqud_assign_perturbs_only_samples_whose_level1_code_is_hot():
    model = fitted(decay="frqud", noise_scale=50.0)
    x = items(96, seed=5)
    argmin = model.encode(x)
    hot_code = int(argmin[0, 0])
    with torch.no_grad():
        model.usage_ema.copy_(F.one_hot(torch.tensor(hot_code), K).float())
    model.train()
    a = model.assign(x, generator=torch.Generator().manual_seed(0))
    hot = argmin[:, 0] == hot_code
    assert 0 < int(hot.sum()) < 96
    assert torch.equal(a.codes[~hot], argmin[~hot])  # cold samples: no noise at any level
    assert (a.codes[hot] != argmin[hot]).any(dim=1).float().mean() > 0.5


def test_sdud_wrapped_loss_value_gradient_sign_and_optimum():
    model = DIGER(DIGERConfig(**DBASE, decay="sdud"), input_dim=D)
    assert torch.equal(model.sigma.detach(), torch.ones(L))
    s = 1.0 + 1.7
    task = torch.tensor(5.0)
    assert float(model.wrap_task_loss(task).detach()) == pytest.approx(5.0 / (2 * s * s) + math.log(s))
    # d/dsigma = (1 - L / s^2) / s / L_levels: a task loss above s^2 = 7.29 grows sigma, one below shrinks it.
    for value, sign in ((20.0, -1), (1.0, 1)):
        model.sigma.grad = None
        model.wrap_task_loss(torch.tensor(value)).backward()
        assert torch.allclose(model.sigma.grad, torch.full((L,), (1 - value / s**2) / s / L))
        assert (torch.sign(model.sigma.grad) == sign).all()
    # Minimising the wrapped loss at a constant task loss drives |sigma| + lambda to sqrt(L_task).
    for value in (16.0, 4.0):
        with torch.no_grad():
            model.sigma.fill_(1.0)
        opt = torch.optim.SGD([model.sigma], lr=2.0)
        for _ in range(300):
            opt.zero_grad()
            model.wrap_task_loss(torch.tensor(value)).backward()
            opt.step()
        assert torch.allclose(model.sigma.abs() + 1.7, torch.full((L,), math.sqrt(value)), atol=1e-3)
    assert fitted(decay="frqud").wrap_task_loss(task) is task


def test_sdud_sigma_scales_the_noise_gets_the_rec_gradient_and_its_own_lr():
    model = fitted(decay="sdud")
    x = items(32, seed=6)
    model.train()
    a = model.assign(x, generator=torch.Generator().manual_seed(0))
    rec_loss(a.onehot).backward()
    assert (model.sigma.grad != 0).all()
    with torch.no_grad():
        model.sigma.zero_()
    assert torch.equal(model.assign(x).codes, model.encode(x))  # sigma 0: no noise
    groups = model.param_groups(1e-4)
    assert [g["lr"] for g in groups] == [1e-4, 1e-3]
    assert groups[1]["params"] == [model.sigma] and groups[1]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert all(p is not model.sigma for p in groups[0]["params"])
    assert len(fitted(decay="none").param_groups(1e-4)) == 1


def test_fit_is_rqvae_fit():
    rq = RQVAE(RQVAEConfig(**BASE, reduction="mean"), input_dim=D).fit(items(), seed=3, device="cpu", progress=False)
    dg = DIGER(DIGERConfig(**DBASE, decay="sdud"), input_dim=D).fit(items(), seed=3, device="cpu", progress=False)
    state = dg.state_dict()
    assert set(state) == set(rq.state_dict()) | {"sigma"}
    for key, value in rq.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert torch.equal(dg.encode(items()), rq.encode(items()))


@pytest.mark.parametrize("decay", ["frqud", "sdud"])
def test_save_load_round_trip_keeps_the_noise_state(tmp_path, decay):
    model = fitted(decay=decay).train()
    model.assign(items(32, seed=7), generator=torch.Generator().manual_seed(0))
    if decay == "sdud":
        with torch.no_grad():
            model.sigma.copy_(torch.tensor([0.5, -0.25, 2.0]))
    model.save(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, DIGER) and loaded.config == model.config and not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    assert ("usage_ema" in loaded.state_dict()) == (decay == "frqud")
    assert torch.equal(loaded.encode(items()), model.encode(items()))


def test_seeded_determinism():
    a, b = fitted(decay="frqud"), fitted(decay="frqud")
    x = items(48, seed=8)
    outs = []
    for model in (a, b):
        model.train()
        with torch.no_grad():  # every level-1 code hot, so that every sample draws noise
            model.usage_ema.fill_(1.0)
        torch.manual_seed(11)  # the default noise source is torch's seeded RNG
        out = model.assign(x)
        (grad,) = torch.autograd.grad(rec_loss(out.onehot) + out.loss, model.quantizer.codebooks)
        outs.append((out.codes, grad, model.usage_ema.clone()))
    for left, right in zip(*outs):
        assert torch.equal(left, right)
    with torch.no_grad():
        a.usage_ema.fill_(1.0)
    torch.manual_seed(12)
    assert not torch.equal(a.assign(x).codes, outs[0][0])
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    first = a.assign(x, generator=gen).codes
    gen.set_state(state)
    assert torch.equal(a.assign(x, generator=gen).codes, first)


def test_config_is_strict_and_checked():
    tok = build_tokenizer("diger", {**BASE, "decay": "sdud", "sigma_lr": 1}, input_dim=D)
    assert isinstance(tok, DIGER) and tok.config.sigma_lr == 1.0
    cases = [
        ({"decay": "frq"}, r"tokenizer\.params\.decay: expected one of"),
        ({"temperature": 2}, r"tokenizer\.params\.temperature: unknown parameter"),
        ({"gumbel": False, "decay": "frqud"}, r"tokenizer\.params\.decay: needs gumbel: true"),
        ({"gumbel": False, "decay": "none", "balance_weight": 0.1}, r"tokenizer\.params\.balance_weight"),
        ({"decay": "sdud", "noise_scale": 0.0}, r"tokenizer\.params\.noise_scale: must be > 0"),
        ({"gumbel_tau": 0}, r"tokenizer\.params\.gumbel_tau: must be > 0"),
        ({"frqud_momentum": 1.0}, r"tokenizer\.params\.frqud_momentum"),
        ({"codebook_size": 0}, r"tokenizer\.params\.codebook_size: must be >= 1"),
    ]
    for params, message in cases:
        with pytest.raises(ValueError, match=message):
            build_tokenizer("diger", params, input_dim=D)
    with pytest.raises(ValueError, match="update_usage needs 'frqud'"):
        fitted(decay="none").update_usage(torch.zeros(3, dtype=torch.long))


def test_training_assignment_runs_in_float32_under_bf16_autocast():
    model = fitted(decay="frqud", noise_scale=0.0).train()  # no noise: codes must be encode()'s argmin
    x = items(64, seed=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = model.assign(x)
    assert a.logits.dtype == a.quantized.dtype == a.reconstruction.dtype == torch.float32
    assert torch.equal(a.codes, model.encode(x))


def changed_per_level(model: DIGER, x: torch.Tensor, draws: int = 8) -> list[float]:
    model.train()
    for seed in range(draws):
        model.assign(x, generator=torch.Generator().manual_seed(seed))
    return model.joint_stats()["noise.changed"]


def test_noise_changed_share_is_logged_per_level_and_gap_scaling_evens_it_out():
    x = items(256, seed=5)
    quiet = fitted(decay="none", noise_scale=0.0)
    assert changed_per_level(quiet, x) == [0.0] * L  # no noise, no changed code
    assert "noise.changed" not in quiet.joint_stats()  # reset by the previous call
    plain = changed_per_level(fitted(decay="none", noise_scale=1.0), x)
    scaled = changed_per_level(fitted(decay="none", noise_scale=1.0, noise_gap_scaled=True), x)
    # unscaled, the share grows with depth (the residuals' gaps shrink); scaled to each level's gap it does not
    spread = max(plain) - min(plain)
    assert plain[0] < plain[-1] and max(scaled) - min(scaled) < 0.5 * spread, (plain, scaled)
    assert all(0 < s < 1 for s in scaled)


def test_reference_joint_loss_is_latent_and_codes_are_sinkhorn_balanced():
    """DIGER's reference (junchen-fu/DIGER): mse(z_hat, z) + the VQ loss of Ind . E, no decoder; Sinkhorn codes
    (epsilon 0.003) over the batch for the noise-free samples and over the catalogue in the code table."""
    model = fitted(decay="frqud", sk_epsilon=0.003)
    x = items(96, seed=9)
    model.train()
    a = model.assign(x, generator=torch.Generator().manual_seed(0))
    assert set(a.terms) == {"recon", "rq"}
    assert torch.allclose(a.terms["recon"], F.mse_loss(a.quantized, a.latent))
    # the decoder gets nothing from the joint loss: only the codebooks and the encoder do
    grads = torch.autograd.grad(a.loss, [model.quantizer.codebooks, *model.decoder.parameters()], allow_unused=True)
    assert grads[0].abs().sum() > 0 and all(g is None for g in grads[1:])
    # nothing is hot on the first batch (the EMA starts uniform): every code is the batch's Sinkhorn code
    z = model.encoder(model.standardize(x)).detach()
    residual = z
    for level in range(L):
        d = squared_distances(residual, model.quantizer.codebooks[level].detach())
        assert torch.equal(a.codes[:, level], sinkhorn_codes(d, 0.003, 50))
        scale = (d.max() - d.min()) / 2 + 1e-5
        assert torch.allclose(a.logits[:, level], -(d - (d.max() + d.min()) / 2) / scale, atol=1e-5)  # in [-1, 1]
        residual = residual - model.quantizer.codebooks[level].detach()[a.codes[:, level]]
    # the code table is balanced over the whole catalogue: flatter level-1 usage than the nearest codeword's
    table, nearest = model.encode(x), model.quantizer.encode(z)
    assert torch.bincount(table[:, 0], minlength=K).max() < torch.bincount(nearest[:, 0], minlength=K).max()
    assert torch.equal(model.encode(x[:3]), nearest[:3])  # fewer rows than codes: the nearest codewords
