import pytest
import torch

from sidrec.tokenizers import RQKMeans, RQKMeansConfig, build_tokenizer, load_tokenizer
from sidrec.tokenizers import rqkmeans as rqkmeans_module


def representable() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Points that are exactly a level-1 centre plus a level-2 offset, every combination 4 times."""
    gen = torch.Generator().manual_seed(0)
    coarse = 20 * torch.randn(3, 6, generator=gen)
    fine = torch.randn(3, 6, generator=gen)
    i, j = torch.meshgrid(torch.arange(3), torch.arange(3), indexing="ij")
    i, j = i.flatten().repeat(4), j.flatten().repeat(4)
    return coarse[i] + fine[j], i, j


def test_exactly_representable_data_has_zero_residual():
    x, i, j = representable()
    tok = RQKMeans(RQKMeansConfig(num_levels=2, codebook_size=3, iters=20), input_dim=6)
    logs = []
    tok.fit(x, seed=0, device="cpu", progress=False, log=logs.append)
    out = tok(x)
    assert out.loss.item() == pytest.approx(0.0, abs=1e-8)
    assert torch.allclose(out.reconstruction, x, atol=1e-4)
    codes = tok.encode(x)
    # Level 1 splits by coarse centre, level 2 by fine offset.
    assert len({(int(c), int(k)) for c, k in zip(codes[:, 0], i)}) == 3
    assert len({(int(c), int(k)) for c, k in zip(codes[:, 1], j)}) == 3
    assert [d["level"] for d in logs] == [1, 2]
    assert logs[0]["loss"] > 1.0 and logs[1]["loss"] == pytest.approx(0.0, abs=1e-8)
    assert logs[1]["unique_tuples"] == 9 and logs[1]["max_group"] == 4


def test_standardize_is_applied_and_saved(tmp_path):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(300, 5, generator=gen) * torch.tensor([1.0, 10.0, 0.1, 5.0, 1.0]) + 3
    tok = build_tokenizer("rqkmeans", {"num_levels": 3, "codebook_size": 8, "standardize": True}, input_dim=5)
    tok.fit(x, seed=0, device="cpu", progress=False)
    assert torch.allclose(tok.input_mean, x.mean(0)) and torch.allclose(
        tok.input_std, x.std(0, unbiased=False)
    )
    tok.save(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, RQKMeans) and loaded.config == tok.config
    assert torch.equal(loaded.encode(x), tok.encode(x))
    assert torch.equal(loaded.semantic_ids(x), tok.semantic_ids(x))
    assert loaded.encode(x[:0]).shape == (0, 3) and loaded.semantic_ids(x[:0]).shape == (0, 4)


def test_fit_is_deterministic_and_residual_shrinks_per_level():
    x = torch.randn(400, 8, generator=torch.Generator().manual_seed(2))
    cfg = RQKMeansConfig(num_levels=3, codebook_size=16)
    logs_a, logs_b = [], []
    a = RQKMeans(cfg, input_dim=8).fit(x, seed=3, device="cpu", progress=False, log=logs_a.append)
    b = RQKMeans(cfg, input_dim=8).fit(x, seed=3, device="cpu", progress=False, log=logs_b.append)
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.encode(x), b.encode(x))
    losses = [d["loss"] for d in logs_a]
    assert losses[0] > losses[1] > losses[2]
    assert losses[-1] == pytest.approx(a(x).loss.item(), rel=1e-5)


def test_balanced_variant_spreads_items_over_codes():
    # One dense blob and a few outliers: plain k-means spends codes on outliers, balanced k-means splits the blob.
    gen = torch.Generator().manual_seed(4)
    x = torch.cat([0.1 * torch.randn(240, 4, generator=gen), 10 + torch.randn(16, 4, generator=gen)])
    plain = RQKMeans(RQKMeansConfig(num_levels=1, codebook_size=8), input_dim=4)
    balanced = RQKMeans(RQKMeansConfig(num_levels=1, codebook_size=8, balanced=True), input_dim=4)
    sizes = [
        torch.bincount(t.fit(x, seed=0, device="cpu", progress=False).encode(x)[:, 0], minlength=8)
        for t in (plain, balanced)
    ]
    assert sizes[1].max() < sizes[0].max()
    assert sizes[1].max() <= 2 * 256 // 8


def test_encode_before_fit_and_bad_input():
    tok = RQKMeans(RQKMeansConfig(num_levels=1, codebook_size=2), input_dim=3)
    with pytest.raises(RuntimeError, match="before fit"):
        tok.encode(torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"emb: expected a tensor of shape \(N, 3\)"):
        tok.fit(torch.randn(2, 4), seed=0, device="cpu", progress=False)


def test_init_sample_is_validated_and_caps_only_large_inputs():
    with pytest.raises(ValueError, match="init_sample"):
        RQKMeansConfig(codebook_size=8, init_sample=4)
    x = torch.randn(60, 3, generator=torch.Generator().manual_seed(0))
    fits = [
        RQKMeans(RQKMeansConfig(num_levels=2, codebook_size=4, iters=5, init_sample=s), input_dim=3)
        .fit(x, seed=0, device="cpu", progress=False)
        .centroids
        for s in (None, 60, 10)
    ]
    # A cap at or above N leaves the fit unchanged; a smaller one seeds on a subset, so the fit differs.
    assert torch.equal(fits[0], fits[1]) and not torch.equal(fits[0], fits[2])
    assert build_tokenizer("rqkmeans", {"init_sample": None}, 3).config.init_sample is None


@pytest.mark.parametrize("standardize", [False, True])
def test_blocked_in_place_residual_equals_one_block(standardize, monkeypatch):
    x = 3 + torch.randn(500, 6, generator=torch.Generator().manual_seed(1))
    cfg = RQKMeansConfig(num_levels=3, codebook_size=8, iters=5, standardize=standardize)
    fits = []
    for block in (10_000, 7):  # one block = the plain full-tensor update; 7 rows = many blocks
        monkeypatch.setattr(rqkmeans_module, "_BLOCK", block)
        logs = []
        tok = RQKMeans(cfg, input_dim=6).fit(x, seed=0, device="cpu", progress=False, log=logs.append)
        fits.append((tok.centroids, [d["loss"] for d in logs]))
    assert torch.equal(fits[0][0], fits[1][0]) and fits[0][1] == fits[1][1]
