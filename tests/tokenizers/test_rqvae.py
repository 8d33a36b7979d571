import json

import pytest
import torch

from sidrec.tokenizers import RQVAE, RQVAEConfig, codebook_health, load_tokenizer


def identity_model() -> RQVAE:
    """1-layer encoder and decoder set to the identity, two levels of two codewords: easy to follow by hand."""
    cfg = RQVAEConfig(num_levels=2, codebook_size=2, latent_dim=2, hidden_dims=[], standardize=False)
    model = RQVAE(cfg, input_dim=2)
    with torch.no_grad():
        for linear in (model.encoder[0], model.decoder[0]):
            linear.weight.copy_(torch.eye(2))
            linear.bias.zero_()
        model.quantizer.codebooks.copy_(torch.tensor([[[1.0, 1.0], [-1.0, -1.0]], [[0.0, 0.5], [0.0, 2.0]]]))
    return model


def test_loss_matches_hand_computed_reference():
    model = identity_model()
    x = torch.tensor([[1.0, 2.0], [-1.0, -2.0]])
    out = model(x)
    # Item 1: z = (1, 2) -> code 0 (dist 1 vs 13), r_1 = (0, 1) -> code 0 (dist 0.25 vs 1), z_hat = (1, 1.5).
    #   recon ||(0, 0.5)||^2 = 0.25; level 1: 1 + 0.25 * 1; level 2: 0.25 + 0.25 * 0.25  -> 1.8125
    # Item 2: z = (-1, -2) -> code 1, r_1 = (0, -1) -> code 0, z_hat = (-1, -0.5).
    #   recon ||(0, -1.5)||^2 = 2.25; level 1: 1 + 0.25 * 1; level 2: 2.25 + 0.25 * 2.25 -> 6.3125
    assert out.codes.tolist() == [[0, 0], [1, 0]]
    assert torch.allclose(out.quantized, torch.tensor([[1.0, 1.5], [-1.0, -0.5]]))
    assert torch.allclose(out.reconstruction, torch.tensor([[1.0, 1.5], [-1.0, -0.5]]))
    assert out.loss.item() == pytest.approx((1.8125 + 6.3125) / 2)


def test_gradients_follow_the_stop_gradients():
    model = identity_model()
    x = torch.tensor([[1.0, 2.0], [-1.0, -2.0]])
    model(x).loss.backward()
    grad = model.quantizer.codebooks.grad
    # Codebook term 2 (e - sg[r]) for the chosen codewords, plus beta * commitment of level 2 reaching the level-1
    # codeword through r_1 = z - e^1; the straight-through decoder input gives codewords no reconstruction
    # gradient. Averaged over the 2 items.
    assert torch.allclose(grad[0, 0], torch.tensor([0.0, (-2.0 - 0.25) / 2]))
    assert torch.allclose(grad[0, 1], torch.tensor([0.0, (2.0 + 0.75) / 2]))
    assert torch.allclose(grad[1, 0], torch.tensor([0.0, (-1.0 + 3.0) / 2]))
    assert torch.allclose(grad[1, 1], torch.zeros(2))
    # dL/dz per item: recon -2 (x - x_hat) through the straight-through path, plus beta * 2 (r_l - e) per level.
    dz = torch.tensor([[0.0, -1.0 + 0.5 + 0.25], [0.0, 3.0 - 0.5 - 0.75]]) / 2
    assert torch.allclose(model.encoder[0].weight.grad, dz.T @ x)
    assert torch.allclose(model.encoder[0].bias.grad, dz.sum(0))


def test_straight_through_gives_reconstruction_gradient_to_the_encoder():
    torch.manual_seed(0)
    model = RQVAE(RQVAEConfig(num_levels=2, codebook_size=4, latent_dim=3, hidden_dims=[8]), input_dim=5)
    with torch.no_grad():
        model.decoder[-1].weight.normal_()  # the fresh decoder's output layer is zero
    out = model(torch.randn(6, 5))
    assert torch.allclose(out.quantized, model.quantizer.lookup(out.codes))
    out.reconstruction.pow(2).sum().backward()
    assert model.encoder[0].weight.grad.abs().sum() > 0
    assert model.quantizer.codebooks.grad is None


def clustered(n: int = 512, dim: int = 16, k: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(k, dim, generator=gen)
    labels = torch.arange(n) % k
    return centres[labels] + 0.1 * torch.randn(n, dim, generator=gen), labels


SMALL = RQVAEConfig(num_levels=2, codebook_size=8, latent_dim=8, hidden_dims=[32], batch_size=128, epochs=40)


def test_fit_on_clustered_data_uses_the_codebook_and_reconstructs():
    x, labels = clustered()
    logs = []
    model = RQVAE(SMALL, input_dim=16).fit(x, seed=0, device="cpu", progress=False, log=logs.append)
    codes = model.encode(x)
    health = codebook_health(codes, 8)
    assert health["usage"][0] == 1.0
    # Level 1 recovers the 8 clusters exactly.
    assert len({(int(c), int(y)) for c, y in zip(codes[:, 0], labels)}) == 8
    out = model(x)
    recon = (model.standardize(x) - out.reconstruction).pow(2).sum(-1).mean()
    assert recon < 0.1  # total variance is 16 (standardised); the within-cluster noise alone is ~0.02
    assert [d["epoch"] for d in logs] == list(range(1, 41))
    assert {"loss", "recon", "usage", "perplexity", "collision_rate", "max_group"} <= logs[-1].keys()
    assert logs[-1]["loss"] < logs[0]["loss"]


def test_fit_and_encode_are_deterministic_and_leave_global_rng_alone():
    x, _ = clustered(n=256)
    cfg = RQVAEConfig(**{**SMALL.__dict__, "epochs": 3})
    a, b = RQVAE(cfg, input_dim=16), RQVAE(cfg, input_dim=16)
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a.fit(x, seed=7, device="cpu", progress=False)
    assert torch.equal(torch.rand(1), expected)
    b.fit(x, seed=7, device="cpu", progress=False)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert torch.equal(a.encode(x), a.encode(x))
    assert torch.equal(a.encode(x, batch_size=7), a.encode(x))


def test_save_load_round_trip(tmp_path):
    x, _ = clustered(n=256)
    cfg = RQVAEConfig(**{**SMALL.__dict__, "epochs": 3, "hidden_dims": [32, 16]})
    model = RQVAE(cfg, input_dim=16).fit(x, seed=0, device="cpu", progress=False)
    model.save(tmp_path / "tok")
    meta = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    assert meta == {"name": "rqvae", "config": cfg.__dict__, "input_dim": 16}
    loaded = load_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, RQVAE) and loaded.config == cfg
    assert torch.equal(loaded.input_std, model.input_std) and not torch.equal(
        loaded.input_std, torch.ones(16)
    )
    assert torch.equal(loaded.encode(x), model.encode(x))
    assert torch.equal(loaded.semantic_ids(x), model.semantic_ids(x))
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["tokenizer.json", "tokenizer.safetensors"]


def test_load_errors_name_the_file(tmp_path):
    model = RQVAE(SMALL, input_dim=16).fit(clustered(n=64)[0], seed=0, device="cpu", progress=False)
    model.save(tmp_path / "tok")
    meta_path = tmp_path / "tok" / "tokenizer.json"
    meta = json.loads(meta_path.read_text())

    meta_path.write_text(json.dumps({**meta, "config": {**meta["config"], "codebook_size": 16}}))
    with pytest.raises(ValueError, match=r"tokenizer\.safetensors: does not match"):
        load_tokenizer(tmp_path / "tok")
    meta_path.write_text(json.dumps({**meta, "config": {**meta["config"], "colour": 1}}))
    with pytest.raises(ValueError, match=r"tokenizer\.json: tokenizer\.params\.colour: unknown parameter"):
        load_tokenizer(tmp_path / "tok")
    meta_path.write_text('{"name": "rqvae",\n "config": }')
    with pytest.raises(ValueError, match=r"tokenizer\.json:2:"):
        load_tokenizer(tmp_path / "tok")
    (tmp_path / "tok" / "tokenizer.safetensors").unlink()
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(FileNotFoundError, match="tokenizer.safetensors"):
        load_tokenizer(tmp_path / "tok")
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path / "missing")


def test_input_checks():
    model = RQVAE(SMALL, input_dim=16)
    with pytest.raises(RuntimeError, match="before fit"):
        model.encode(torch.randn(3, 16))
    with pytest.raises(ValueError, match=r"emb: expected a tensor of shape \(N, 16\), got \(3, 4\)"):
        model.fit(torch.randn(3, 4), seed=0, device="cpu", progress=False)
    with pytest.raises(ValueError, match="NaN"):
        model.fit(torch.full((3, 16), float("nan")), seed=0, device="cpu", progress=False)
    with pytest.raises(ValueError, match="no items"):
        model.fit(torch.zeros(0, 16), seed=0, device="cpu", progress=False)


def test_diverging_fit_raises():
    cfg = RQVAEConfig(**{**SMALL.__dict__, "standardize": False})
    x = 1e20 * clustered(n=64)[0]  # squares overflow float32
    with pytest.raises(RuntimeError, match="loss is inf at epoch 1"):
        RQVAE(cfg, input_dim=16).fit(x, seed=0, device="cpu", progress=False)
