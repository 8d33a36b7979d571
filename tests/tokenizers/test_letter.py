"""LETTER: the collaborative and diversity losses, the Sinkhorn collision repair, fit, save/load and a tiny run."""

import json

import pytest
import torch
import torch.nn.functional as F

from sidrec.tokenizers import Letter, LetterConfig, build_tokenizer, codebook_health, load_tokenizer
from sidrec.tokenizers.base import assign_semantic_ids
from sidrec.tokenizers.letter import (
    cf_loss,
    colliding_items,
    diversity_loss,
    repair_collisions,
    sample_positive_codes,
)
from sidrec.tokenizers.residual import sinkhorn_codes

SMALL = LetterConfig(
    num_levels=2, codebook_size=8, latent_dim=4, hidden_dims=[16], batch_size=64, epochs=4, div_clusters=2,
    div_weight=0.1,
)


def data(n: int = 128, dim: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=gen), torch.randn(n, SMALL.latent_dim, generator=gen)


def test_cf_loss_is_lowest_when_latents_match_their_targets():
    h = F.normalize(torch.randn(16, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    matched = cf_loss(4 * h, h)
    for seed in range(5):
        shuffled = h[torch.randperm(16, generator=torch.Generator().manual_seed(seed))]
        assert matched < cf_loss(4 * shuffled, h)
    # Raw dot product (no normalisation): scaling the matching latents up sharpens the softmax.
    assert cf_loss(8 * h, h) < matched
    # The reference: cross-entropy of z_hat @ H^T with the diagonal as targets.
    z = torch.randn(16, 8)
    assert torch.allclose(cf_loss(z, h), F.cross_entropy(z @ h.T, torch.arange(16)))


def test_positive_codes_share_the_cluster_and_never_equal_the_code():
    groups = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])  # group 0: codes 0, 3, 6, 9
    codes = torch.arange(10).repeat(200)
    pos = sample_positive_codes(codes, groups, torch.Generator().manual_seed(0))
    assert torch.equal(groups[pos], groups[codes])
    assert not (pos == codes).any()
    # Every other member of the group is drawn (uniformly: 200 draws over 3 others for code 0).
    drawn = pos[codes == 0]
    assert set(drawn.tolist()) == {3, 6, 9} and torch.bincount(drawn, minlength=10)[[3, 6, 9]].min() > 40
    same = sample_positive_codes(codes, groups, torch.Generator().manual_seed(0))
    assert torch.equal(pos, same)
    with pytest.raises(ValueError, match="no other code"):
        sample_positive_codes(torch.tensor([0]), torch.tensor([0, 1, 1]), torch.Generator())


def test_diversity_loss_masks_the_own_code_and_targets_the_positive():
    book = torch.tensor([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0], [0.0, 1.0]])
    codes = torch.tensor([0, 0])
    # Code 0 scores highest against itself; masked, the loss is the CE over codes 1..3 only.
    near, far = diversity_loss(book[codes], book, codes, torch.tensor([1, 1])), diversity_loss(
        book[codes], book, codes, torch.tensor([2, 2])
    )
    logits = book[0] @ book[1:].T
    assert near == pytest.approx(float(F.cross_entropy(logits[None], torch.tensor([0]))))
    assert near < far
    # Its gradient pulls the positive codeword towards the query and pushes the negatives away.
    book.requires_grad_(True)
    diversity_loss(book[codes], book, codes, torch.tensor([1, 1])).backward()
    assert (book.grad[1] @ book.detach()[0]) < 0 and (book.grad[2] @ book.detach()[0]) > 0


def test_epoch_clusters_are_balanced_groups_of_each_levels_codewords():
    model = Letter(LetterConfig(**{**SMALL.__dict__, "codebook_size": 10, "div_clusters": 5}), input_dim=12)
    model.begin_epoch(torch.Generator().manual_seed(0))
    assert model._div_groups.shape == (2, 10)
    for level in range(2):
        assert torch.bincount(model._div_groups[level]).tolist() == [2] * 5


def test_collision_repair_on_a_crafted_catalogue():
    # Prefix (0,): items 0-3 share (0, 1), item 4 holds (0, 2). Prefix (1,): items 5-6 share (1, 0).
    # Prefix (2,): three items share (2, 0) and K = 2 codes: one item must keep a dedup token.
    codes = torch.tensor([[0, 1], [0, 1], [0, 1], [0, 1], [0, 2], [1, 0], [1, 0], [2, 0], [2, 0], [2, 0]])
    k = 4
    codes[7:, -1] = 0
    movers = colliding_items(codes)
    assert movers.tolist() == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    gen = torch.Generator().manual_seed(0)
    cost = torch.rand(len(movers), k, generator=gen)
    cost[-3:, 2:] = 100.0  # far codes: still allowed, only less preferred
    repaired = repair_collisions(codes, movers, cost, epsilon=0.01, iters=50)
    assert torch.equal(repaired[:, 0], codes[:, 0])  # prefixes unchanged
    assert torch.equal(repaired[4], codes[4])  # the non-colliding item keeps its code
    assert codebook_health(repaired, k)["collision_rate"] < codebook_health(codes, k)["collision_rate"]
    # Prefix (0,): 4 movers, 3 free codes (2 is taken) -> 3 distinct new codes, one mover left over.
    first = repaired[:4, 1].tolist()
    assert 2 not in first and len(set(first)) == 3
    # Prefixes (1,) and (2,) have room for all their movers: no collision left there.
    assert len({tuple(r) for r in repaired[5:].tolist()}) == 5
    assert set(repaired[7:, 1].tolist()) == {0, 1, 2}
    sids = assign_semantic_ids(repaired)
    assert len({tuple(r) for r in sids.tolist()}) == len(codes)
    assert int((sids[:, -1] > 0).sum()) == 1  # only the overfull prefix needs a dedup token


def test_collision_repair_follows_the_distances():
    codes = torch.tensor([[0, 0], [0, 0], [0, 0]])
    cost = torch.tensor([[0.0, 5.0, 9.0], [5.0, 0.0, 9.0], [9.0, 5.0, 0.0]])
    repaired = repair_collisions(codes, torch.arange(3), cost, epsilon=0.01, iters=50)
    assert repaired[:, 1].tolist() == [0, 1, 2]
    assert torch.equal(repair_collisions(codes, torch.arange(0), cost[:0], 0.01, 50), codes)
    # One level: the prefix is empty and shared by every item.
    single = torch.tensor([[0], [0], [1], [1], [2]])
    fixed = repair_collisions(single, colliding_items(single), torch.rand(4, 4), 0.01, 50)
    assert fixed[4, 0] == 2 and set(fixed.flatten().tolist()) == {0, 1, 2, 3}  # 4 movers, 3 free codes


def test_semantic_ids_repairs_collisions_of_a_fitted_model():
    x, h = data(n=48)
    cfg = LetterConfig(**{**SMALL.__dict__, "epochs": 2})
    model = Letter(cfg, input_dim=12).fit(x, collab=h[:48], seed=0, device="cpu", progress=False)
    greedy = model.encode(x)
    repaired = model.semantic_ids(x)
    assert repaired.shape == (48, 3) and len({tuple(r) for r in repaired.tolist()}) == 48
    assert torch.equal(repaired[:, 0], greedy[:, 0])
    before = codebook_health(greedy, 8)["collision_rate"]
    after = codebook_health(repaired[:, :-1], 8)["collision_rate"]
    # The repair leaves only what the last level cannot hold: the items beyond K = 8 under one prefix.
    overflow = (torch.bincount(greedy[:, 0], minlength=8) - 8).clamp_min(0).sum() / 48
    assert before > 0.2 and after == pytest.approx(float(overflow))
    plain = Letter(LetterConfig(**{**cfg.__dict__, "repair_collisions": False}), input_dim=12)
    plain.load_state_dict(model.state_dict())
    assert torch.equal(plain.semantic_ids(x), assign_semantic_ids(greedy))


def test_fit_is_deterministic_logs_and_round_trips(tmp_path):
    x, h = data()
    logs = []
    a = Letter(SMALL, input_dim=12).fit(x, collab=h, seed=3, device="cpu", progress=False, log=logs.append)
    b = Letter(SMALL, input_dim=12).fit(x, collab=h, seed=3, device="cpu", progress=False)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert [r["epoch"] for r in logs] == [1, 2, 3, 4]
    c = Letter(SMALL, input_dim=12).fit(x, collab=h, seed=4, device="cpu", progress=False)
    assert not torch.equal(a.quantizer.codebooks, c.quantizer.codebooks)
    # The collaborative targets steer training: other targets, other weights.
    d = Letter(SMALL, input_dim=12).fit(x, collab=h.flip(0), seed=3, device="cpu", progress=False)
    assert not torch.equal(a.encoder[0].weight, d.encoder[0].weight)

    a.save(tmp_path / "tok")
    meta = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    assert meta["name"] == "letter" and meta["config"]["alpha"] == 0.02 and meta["config"]["num_levels"] == 2
    loaded = load_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, Letter) and loaded.config == SMALL
    assert torch.equal(loaded.semantic_ids(x), a.semantic_ids(x))
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["tokenizer.json", "tokenizer.safetensors"]


def test_bad_inputs_name_the_field():
    x, h = data(n=32)
    model = Letter(SMALL, input_dim=12)
    with pytest.raises(ValueError, match=r"collab: .*tokenizer\.collab"):
        model.fit(x, seed=0, device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"collab \(tokenizer\.collab\): expected one row per item, shape \(32, 4\)"):
        model.fit(x, collab=h[:31], seed=0, device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"8 columns.*tokenizer\.params\.latent_dim = 4"):
        model.fit(x, collab=torch.randn(32, 8), seed=0, device="cpu", progress=False)
    with pytest.raises(ValueError, match="NaN"):
        model.fit(x, collab=torch.full((32, 4), float("nan")), seed=0, device="cpu", progress=False)
    # alpha = 0 switches L_CF off and needs no collaborative embeddings.
    Letter(LetterConfig(**{**SMALL.__dict__, "alpha": 0.0, "epochs": 1}), 12).fit(x, seed=0, progress=False)
    with pytest.raises(ValueError, match=r"tokenizer\.params\.div_clusters: 5 groups of a codebook of 8 codes"):
        build_tokenizer("letter", {"codebook_size": 8, "div_clusters": 5}, input_dim=12)
    for key, value in (("alpha", -1.0), ("div_weight", -1.0), ("sinkhorn_epsilon", 0.0), ("sinkhorn_iters", 0)):
        with pytest.raises(ValueError, match=rf"tokenizer\.params\.{key}: must be"):
            build_tokenizer("letter", {key: value}, input_dim=12)
    with pytest.raises(ValueError, match=r"tokenizer\.params\.beta_div: unknown parameter"):
        build_tokenizer("letter", {"beta_div": 1e-4}, input_dim=12)
    assert build_tokenizer("letter", {}, input_dim=12).num_levels == 4  # LETTER's 4 learned levels


def test_other_tokenizers_accept_and_ignore_collab():
    x, h = data(n=64)
    for name, params in (("rqvae", {"epochs": 1, "codebook_size": 4, "hidden_dims": [8]}),
                         ("rqkmeans", {"codebook_size": 4, "iters": 3}),
                         ("cost", {"epochs": 1, "codebook_size": 4, "hidden_dims": [8]}),
                         ("diger", {"epochs": 1, "codebook_size": 4, "hidden_dims": [8]})):
        a, b = build_tokenizer(name, params, 12), build_tokenizer(name, params, 12)
        assert not a.uses_collab
        a.fit(x, seed=0, device="cpu", progress=False)
        b.fit(x, seed=0, device="cpu", progress=False, collab=h)
        assert torch.equal(a.encode(x), b.encode(x)), name
    assert Letter.uses_collab


def test_tiger_logit_temperature_scales_the_training_loss_only():
    """LETTER's recommender: TIGER whose logits are divided by model.logit_temperature in the training loss; it
    decodes with the plain logits, as LETTER's code."""
    from sidrec.models.tiger import Tiger, TigerConfig

    sizes = dict(level_sizes=[5, 5, 3], d_model=16, num_heads=2, d_kv=8, d_ff=32, num_encoder_layers=1,
                 num_decoder_layers=1, max_history=4, user_buckets=0, dropout=0.0)
    warm = Tiger(TigerConfig(**sizes, logit_temperature=0.7), generator=torch.Generator().manual_seed(0)).eval()
    cold = Tiger(TigerConfig(**sizes, logit_temperature=1.0)).eval()
    cold.load_state_dict(warm.state_dict())
    history = torch.tensor([[[0, 1, 0], [2, 3, 1]], [[4, 4, 2], [1, 0, 0]]])
    target = torch.tensor([[3, 2, 1], [0, 4, 2]])
    ids, mask = warm.encoder_inputs(history, None)
    with torch.no_grad():
        plain = cold(ids, mask, target)
        expected = sum(F.cross_entropy(lg / 0.7, target[:, i]) for i, lg in enumerate(plain)) / 3
        assert warm.loss(ids, mask, target) == pytest.approx(float(expected), rel=1e-5)
        logits, _ = warm.decode_step(warm.start_decoding(ids, mask), None, 0)
        torch.testing.assert_close(logits, plain[0], atol=1e-5, rtol=1e-5)


def test_tiny_run_with_letter_and_cooccurrence_collab(tiny_args, capsys):
    from sidrec.cli import main

    run, args = tiny_args
    extra = [
        "tokenizer.name=letter",
        "tokenizer.params={num_levels: 2, codebook_size: 8, epochs: 3, hidden_dims: [16], latent_dim: 8, "
        "div_clusters: 2}",
        "tokenizer.collab={sources: [cooccurrence], cooccurrence_dim: 8}",
        "model.params.logit_temperature=0.8",
    ]
    assert main(["run", "configs/ml-100k-demo.yaml", *args, *extra, "--quiet"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["test.recall@10"] <= 1.0
    assert json.loads((run / "tokenizer" / "tokenizer.json").read_text())["name"] == "letter"
    key = json.loads((run / "stages.json").read_text())["tokenize"]
    # The collaborative embedding spec is part of the tokenize stage key: changing it re-fits the tokenizer.
    other = [*args, *extra[:2], "tokenizer.collab={sources: [cooccurrence], cooccurrence_dim: 8, seed: 1}"]
    assert main(["tokenize", "configs/ml-100k-demo.yaml", *other, "--quiet"]) == 0
    assert json.loads((run / "stages.json").read_text())["tokenize"] != key
    # A collaborative size other than latent_dim is an error naming the fields.
    bad = [*args, *extra[:2], "tokenizer.collab={sources: [cooccurrence], cooccurrence_dim: 6}"]
    capsys.readouterr()
    assert main(["tokenize", "configs/ml-100k-demo.yaml", *bad, "--quiet"]) == 2
    assert "tokenizer.collab" in capsys.readouterr().err
    assert main(["tokenize", "configs/ml-100k-demo.yaml", *args, "tokenizer.collab={sourcez: [sasrec]}"]) == 2
    assert "tokenizer.collab.sourcez" in capsys.readouterr().err


def clustered(n: int, dim: int = 24, seed: int = 0) -> torch.Tensor:
    """``(n, dim)`` items around 6 centres of uneven spread, so nearest-codeword usage is uneven."""
    gen = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(6, dim, generator=gen)
    x = centres[torch.randint(6, (n,), generator=gen)] + torch.randn(n, dim, generator=gen)
    x[: n // 2] *= 0.2  # half the items crowd near the origin
    return x


def initialised(cfg: LetterConfig, x: torch.Tensor, like: Letter | None = None) -> Letter:
    """A Letter whose codebooks are initialised on ``x`` (encoder weights copied from ``like`` when given)."""
    model = Letter(cfg, input_dim=x.shape[1])
    if like is not None:
        model.load_state_dict(like.state_dict())
    model._set_standardization(x, True)
    with torch.no_grad():
        model.eval()._init_codebooks(x, torch.Generator().manual_seed(0))
    model.fitted.fill_(True)
    return model


def test_sinkhorn_codes_balance_a_batch_and_follow_the_distances():
    gen = torch.Generator().manual_seed(0)
    d = torch.rand(64, 8, generator=gen)
    d[:, 0] -= 1.0  # code 0 is every item's nearest
    codes = sinkhorn_codes(d, 0.003, 50)
    assert d.argmin(1).bincount(minlength=8).max() == 64
    counts = codes.bincount(minlength=8)
    assert bool((counts > 0).all()) and counts.max() <= 32  # LETTER's 50 iterations balance only roughly
    # the items that keep code 0 are those that leaving it would cost most
    cost_of_leaving = d[:, 1:].min(1).values - d[:, 0]  # (64,)
    assert cost_of_leaving[codes == 0].min() > cost_of_leaving[codes != 0].median()


def test_training_balances_the_last_level_of_a_batch_and_only_in_training():
    cfg = LetterConfig(num_levels=3, codebook_size=16, latent_dim=6, hidden_dims=[32], batch_size=512, alpha=0.0, div_clusters=4,
                       div_weight=0.0, kmeans_init=False)
    x = clustered(512)
    model = initialised(cfg, x)
    greedy = model.eval().assign(x).codes  # (512, 3)
    balanced = model.train().assign(x).codes
    assert torch.equal(balanced[:, :2], greedy[:, :2])  # the other levels stay the nearest codeword
    counts_greedy = greedy[:, 2].bincount(minlength=16).float()
    counts_balanced = balanced[:, 2].bincount(minlength=16).float()
    assert counts_balanced.max() <= 1.25 * 512 / 16 < counts_greedy.max()
    assert counts_balanced.std() < 0.5 * counts_greedy.std()
    off = Letter(LetterConfig(**{**cfg.__dict__, "train_sk_epsilon": 0.0}), input_dim=24)
    off.load_state_dict(model.state_dict())
    assert torch.equal(off.train().assign(x).codes, greedy)
    assert torch.equal(model.train().encode(x), greedy)  # encode (hence semantic_ids) is always the nearest code


def test_codebooks_start_from_balanced_kmeans_on_the_whole_catalogue():
    cfg = LetterConfig(num_levels=3, codebook_size=16, latent_dim=6, hidden_dims=[32], batch_size=64, div_clusters=4)
    x = clustered(2000)
    model = initialised(cfg, x)
    codes = model.encode(x)
    assert [int(codes[:, level].unique().numel()) for level in range(3)] == [16, 16, 16]
    # the whole catalogue, not one batch: the codebooks do not depend on the batch size
    wide = initialised(LetterConfig(**{**cfg.__dict__, "batch_size": 1024}), x, like=model)
    assert torch.equal(wide.quantizer.codebooks, model.quantizer.codebooks)
    plain = initialised(LetterConfig(**{**cfg.__dict__, "balanced_init": False}), x, like=model)
    assert not torch.equal(plain.quantizer.codebooks, model.quantizer.codebooks)


def test_input_scale_records_the_row_norms_of_every_input():
    x, collab = data()
    tok = Letter(SMALL, x.shape[1]).fit(x, collab=3 * collab, seed=0, device="cpu", progress=False)
    scale = tok.input_scale(x)
    norms, collab_norms = x.norm(dim=1), (3 * collab).norm(dim=1)
    assert scale["input"] == pytest.approx({"mean": float(norms.mean()), "min": float(norms.min()),
                                            "max": float(norms.max())})
    assert scale["standardized"] == scale["input"]  # LETTER's code does not standardise its input
    assert scale["collab"]["mean"] == pytest.approx(float(collab_norms.mean()))
