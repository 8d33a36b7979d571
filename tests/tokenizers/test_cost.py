"""CoST: the contrastive reconstruction loss, the recon modes, fit, save/load and a tiny run."""

import json

import pytest
import torch
import torch.nn.functional as F

from sidrec.tokenizers import RQVAE, CoST, CoSTConfig, RQVAEConfig, build_tokenizer, load_tokenizer
from sidrec.tokenizers.cost import contrastive_reconstruction_loss

SMALL = CoSTConfig(num_levels=2, codebook_size=8, latent_dim=6, hidden_dims=[16], batch_size=64, epochs=4)


def test_contrastive_loss_ranks_the_matching_reconstruction_first():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 10, generator=gen)
    noisy = x + 0.1 * torch.randn(8, 10, generator=gen)
    matched = contrastive_reconstruction_loss(x, noisy, tau=0.1)
    for shift in range(1, 8):
        assert matched < contrastive_reconstruction_loss(x, noisy.roll(shift, 0), tau=0.1)
    # Cosine, not distance: rescaling a reconstruction changes nothing.
    scales = torch.rand(8, 1, generator=gen) + 0.5
    assert contrastive_reconstruction_loss(x, scales * noisy, 0.1) == pytest.approx(float(matched), rel=1e-5)
    # The reference formula: -log softmax_j(cos(x_i, x_hat_j) / tau) at j = i.
    cos = F.cosine_similarity(x[:, None], noisy[None], dim=-1)  # (8, 8)
    assert float(matched) == pytest.approx(float(-(cos / 0.1).log_softmax(1).diag().mean()), rel=1e-5)
    # A lower temperature sharpens the ranking of an already matching reconstruction.
    assert contrastive_reconstruction_loss(x, noisy, 0.05) < matched


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("recon", ["contrastive", "mse", "mse+contrastive"])
def test_recon_modes_combine_the_terms(recon, reduction):
    cfg = CoSTConfig(**{**SMALL.__dict__, "recon": recon, "reduction": reduction})
    model = CoST(cfg, input_dim=10)
    x = torch.randn(16, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(x)
        q = model.quantizer(model.encoder(model.standardize(x)))
    sq = (model.standardize(x) - out.reconstruction).pow(2)  # (16, 10)
    mse = sq.mean() if reduction == "mean" else sq.sum(-1).mean()
    cl = contrastive_reconstruction_loss(model.standardize(x), out.reconstruction, cfg.tau)
    sum_cfg = CoSTConfig(**{**cfg.__dict__, "reduction": "sum"})
    rq_sum = CoST(sum_cfg, input_dim=10).quantizer
    rq_sum.load_state_dict(model.quantizer.state_dict())
    with torch.no_grad():
        rq_summed = rq_sum(model.encoder(model.standardize(x))).loss
    # "mean": the 6 latent dimensions and the 2 levels averaged, i.e. the summed form / (6 * 2)
    rq = rq_summed / 12 if reduction == "mean" else rq_summed
    assert float(q.loss) == pytest.approx(float(rq), rel=1e-5)
    expected = {"contrastive": rq + 0.1 * cl, "mse": rq + mse, "mse+contrastive": rq + mse + 0.1 * cl}
    assert float(out.loss) == pytest.approx(float(expected[recon]), rel=1e-5)
    if (recon, reduction) == ("mse", "sum"):  # exactly the RQ-VAE loss of the same weights
        rq = RQVAE(RQVAEConfig(**{k: v for k, v in cfg.__dict__.items() if k in RQVAEConfig.__dataclass_fields__}),
                   input_dim=10)
        rq.load_state_dict(model.state_dict())
        with torch.no_grad():
            assert float(rq(x).loss) == pytest.approx(float(out.loss), rel=1e-5)


def test_decoder_start_depends_on_the_loss():
    model = CoST(SMALL, input_dim=10)
    assert model.decoder[-1].weight.abs().sum() > 0  # not the RQ-VAE's zero start: cos(x, 0) has no direction
    model(torch.randn(16, 10)).loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    for recon in ("mse", "mse+contrastive"):  # with MSE in the loss: the RQ-VAE's zero start
        assert CoST(CoSTConfig(**{**SMALL.__dict__, "recon": recon}), 10).decoder[-1].weight.abs().sum() == 0


def test_fit_is_deterministic_learns_and_round_trips(tmp_path):
    gen = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(8, 10, generator=gen)
    x = centres[torch.arange(256) % 8] + 0.1 * torch.randn(256, 10, generator=gen)
    cfg = CoSTConfig(**{**SMALL.__dict__, "epochs": 30})
    logs = []
    a = CoST(cfg, input_dim=10).fit(x, seed=0, device="cpu", progress=False, log=logs.append)
    b = CoST(cfg, input_dim=10).fit(x, seed=0, device="cpu", progress=False)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert logs[-1]["loss"] < logs[0]["loss"]
    # The 8 clusters get 8 distinct first-level codes.
    codes = a.encode(x)
    assert len({(int(c), int(y)) for c, y in zip(codes[:, 0], torch.arange(256) % 8)}) == 8
    assert logs[-1]["usage"][0] == 1.0

    a.save(tmp_path / "tok")
    meta = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    assert meta == {"name": "cost", "config": cfg.__dict__, "input_dim": 10}
    loaded = load_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, CoST) and loaded.config == cfg
    assert torch.equal(loaded.semantic_ids(x), a.semantic_ids(x))


def test_config_defaults_and_errors():
    tok = build_tokenizer("cost", {}, input_dim=32)
    cfg = tok.config
    assert (cfg.latent_dim, cfg.num_levels, cfg.codebook_size, cfg.hidden_dims) == (96, 3, 64, [512, 256, 128])
    assert (cfg.alpha, cfg.tau, cfg.beta, cfg.epochs, cfg.recon) == (0.1, 0.1, 0.25, 100, "contrastive")
    assert cfg.reduction == "mean"
    with pytest.raises(ValueError, match=r"tokenizer\.params\.reduction: expected one of"):
        build_tokenizer("cost", {"reduction": "max"}, input_dim=32)
    with pytest.raises(ValueError, match=r"tokenizer\.params\.recon: expected one of"):
        build_tokenizer("cost", {"recon": "l1"}, input_dim=32)
    for key in ("alpha", "tau"):
        with pytest.raises(ValueError, match=rf"tokenizer\.params\.{key}: must be > 0"):
            build_tokenizer("cost", {key: 0.0}, input_dim=32)


def test_tiny_run_with_cost(tiny_args):
    from sidrec.cli import main

    run, args = tiny_args
    extra = ["tokenizer.name=cost",
             "tokenizer.params={num_levels: 2, codebook_size: 8, epochs: 3, hidden_dims: [16], latent_dim: 8}"]
    assert main(["run", "configs/ml-100k-demo.yaml", *args, *extra, "--quiet"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["test.recall@10"] <= 1.0
    assert metrics["tokenizer.health"]["usage"][0] > 0
    assert json.loads((run / "tokenizer" / "tokenizer.json").read_text())["name"] == "cost"
