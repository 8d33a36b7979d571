import torch

from sidrec.tokenizers import ResidualQuantizer


def make_rq(seed: int = 0) -> ResidualQuantizer:
    torch.manual_seed(seed)
    rq = ResidualQuantizer(num_levels=3, codebook_size=5, dim=4, beta=0.25)
    with torch.no_grad():
        rq.codebooks.normal_()
    return rq


def greedy_reference(rq: ResidualQuantizer, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    codes, residuals = [], []
    for row in z:
        r = row.clone()
        rc, rr = [], []
        for level in range(rq.num_levels):
            rr.append(r.clone())
            d = [float(((r - e) ** 2).sum()) for e in rq.codebooks[level].detach()]
            c = min(range(len(d)), key=d.__getitem__)
            rc.append(c)
            r = r - rq.codebooks[level, c].detach()
        codes.append(rc)
        residuals.append(torch.stack(rr))
    return torch.tensor(codes), torch.stack(residuals)


def test_codes_residuals_and_lookup_match_a_per_item_reference():
    rq = make_rq()
    z = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    ref_codes, ref_residuals = greedy_reference(rq, z)
    out = rq(z)
    assert torch.equal(out.codes, ref_codes)
    assert torch.equal(rq.encode(z), ref_codes)
    assert torch.allclose(rq.residuals(z), ref_residuals, atol=1e-6)
    z_hat = rq.lookup(out.codes)
    assert torch.allclose(out.quantized, z_hat, atol=1e-6)  # straight-through value is z_hat
    assert torch.allclose(z_hat, sum(rq.codebooks[lvl, ref_codes[:, lvl]] for lvl in range(3)), atol=1e-6)


def test_distances_are_squared_euclidean():
    rq = make_rq()
    r = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))
    d = rq.distances(r, level=1)
    assert d.shape == (6, 5)
    assert torch.allclose(d, torch.cdist(r, rq.codebooks[1].detach()) ** 2, atol=1e-5)


def test_residuals_follow_given_codes_and_carry_gradients():
    rq = make_rq()
    z = torch.randn(3, 4, requires_grad=True)
    codes = torch.tensor([[0, 1, 2], [4, 4, 4], [1, 0, 3]])
    res = rq.residuals(z, codes)
    assert torch.allclose(res[:, 0], z)
    assert torch.allclose(res[:, 2], z - rq.codebooks[0, codes[:, 0]] - rq.codebooks[1, codes[:, 1]])
    res[:, 2].sum().backward()
    assert z.grad is not None and rq.codebooks.grad is not None
    assert rq.codebooks.grad[0, 4].abs().sum() > 0  # used on level 0 by item 1
    assert rq.codebooks.grad[2].abs().sum() == 0  # the last level does not enter r_2


def test_init_kmeans_puts_codewords_at_cluster_centres():
    centres = torch.tensor([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
    gen = torch.Generator().manual_seed(0)
    z = centres.repeat_interleave(40, dim=0) + 0.05 * torch.randn(120, 2, generator=gen)
    rq = ResidualQuantizer(num_levels=2, codebook_size=3, dim=2)
    rq.init_kmeans(z, iters=20, generator=torch.Generator().manual_seed(0))
    level0 = rq.codebooks[0].detach()
    # Each true centre has exactly one codeword next to it, at the mean of its points.
    nearest_codeword = torch.cdist(centres, level0).argmin(dim=1)
    assert sorted(nearest_codeword.tolist()) == [0, 1, 2]
    for i, k in enumerate(nearest_codeword.tolist()):
        assert torch.allclose(level0[k], z[i * 40 : (i + 1) * 40].mean(0), atol=1e-5)
    # Level 1 clusters what level 0 left over: small residuals around 0.
    assert rq.codebooks[1].detach().abs().max() < 0.3


def test_straight_through_distances_reach_z_through_the_first_level_only():
    # ETEGRec's vq.py: after level 0 the residual is r - (r + sg(e - r)) = sg(r - e), so L_SIA moves z through
    # level 0 and each codebook through its own level only
    rq = ResidualQuantizer(num_levels=3, codebook_size=8, dim=4)
    z = torch.randn(5, 4, requires_grad=True)
    d = rq.straight_through_distances(z)  # (5, 3, 8)
    assert torch.allclose(d[:, 0], torch.cdist(z, rq.codebooks[0]).pow(2), atol=1e-5)
    assert torch.allclose(d, -rq.logits(z), atol=1e-5)  # the same values as the logits, other sign
    later = torch.autograd.grad(d[:, 1:].sum(), [z, rq.codebooks], retain_graph=True)
    assert later[0].abs().sum() == 0  # the full residual path (r_l = z - sum of codewords) would reach z
    assert later[1][0].abs().sum() == 0 and later[1][1:].abs().sum() > 0
    first = torch.autograd.grad(d[:, 0].sum(), [z, rq.codebooks])
    assert first[0].abs().sum() > 0 and first[1][1:].abs().sum() == 0
