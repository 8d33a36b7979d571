"""RQVAE.assign: the differentiable view of a tokenization used by joint schedules."""

import torch

from sidrec.tokenizers import RQVAE, RQVAEConfig


def tiny_rqvae() -> tuple[RQVAE, torch.Tensor]:
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(0))
    cfg = RQVAEConfig(num_levels=2, codebook_size=4, latent_dim=3, hidden_dims=[8], epochs=2, batch_size=32)
    return RQVAE(cfg, input_dim=6).fit(x, seed=0, device="cpu", progress=False), x


def test_assign_agrees_with_forward_and_encode():
    tok, x = tiny_rqvae()
    out = tok.assign(x)
    ref = tok(x)
    assert torch.equal(out.codes, tok.encode(x))
    assert torch.equal(out.codes, ref.codes)
    assert torch.equal(out.onehot.argmax(-1), out.codes) and torch.equal(out.onehot.sum(-1), torch.ones(64, 2))
    assert torch.equal(out.logits.argmax(-1), out.codes)  # nearest codeword = largest logit
    assert torch.allclose(out.loss, ref.loss) and torch.allclose(out.quantized, ref.quantized)
    assert out.latent.shape == (64, 3) and out.reconstruction.shape == (64, 6)


def test_logits_are_minus_squared_distances_of_the_hard_residuals():
    tok, x = tiny_rqvae()
    out = tok.assign(x[:5])
    books = tok.quantizer.codebooks
    r1 = out.latent - books[0][out.codes[:, 0]]  # residual entering level 1
    assert torch.allclose(out.logits[:, 0], -torch.cdist(out.latent, books[0]).pow(2), atol=1e-4)
    assert torch.allclose(out.logits[:, 1], -torch.cdist(r1, books[1]).pow(2), atol=1e-4)


def test_logits_carry_gradient_to_the_codebooks_and_onehot_does_not():
    tok, x = tiny_rqvae()
    out = tok.assign(x[:8])
    assert not out.onehot.requires_grad
    out.logits.logsumexp(-1).sum().backward()
    assert tok.quantizer.codebooks.grad.abs().sum() > 0
    assert tok.encoder[0].weight.grad.abs().sum() > 0
