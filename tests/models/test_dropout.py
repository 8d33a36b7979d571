"""The cheaper CPU dropout: its rate, scale, gradient and seeding, and the T5 paths that use it."""

from __future__ import annotations

import pytest
import torch

from sidrec.models import t5
from sidrec.models.dropout import Dropout, dropout


@pytest.mark.parametrize("p", [0.05, 0.1, 0.3, 0.5])
def test_drop_rate_per_lane_and_kept_values_scaled(p: float) -> None:
    torch.manual_seed(0)
    y = dropout(torch.ones(400_000), p)
    dropped = (y == 0).float()
    # every 16-bit lane of the 64-bit draws (four consecutive elements) drops at rate p; a lane with a biased
    # bit (plain random_() leaves the sign bit of the top lane 0) would show here
    per_lane = dropped.view(-1, 4).mean(0)
    assert (per_lane - p).abs().max() < 0.006, per_lane
    rate = round(p * 2**16) / 2**16
    kept = y[y != 0]
    assert torch.equal(kept, torch.full_like(kept, 1 / (1 - rate)))


def test_mean_is_kept_and_neighbours_are_independent() -> None:
    torch.manual_seed(1)
    x = torch.randn(2_000, 100).abs() + 0.5
    means = torch.stack([dropout(x, 0.2) for _ in range(50)]).mean(0)
    assert abs(means.mean().item() - x.mean().item()) < 0.01 * x.mean().item()
    keep = (dropout(torch.ones(1_000_000), 0.5) != 0).float()
    corr = torch.corrcoef(torch.stack([keep[:-1], keep[1:]]))[0, 1]
    assert abs(corr.item()) < 0.01


def test_gradient_is_the_mask_times_the_scale() -> None:
    torch.manual_seed(2)
    x = torch.randn(64, 33, requires_grad=True)
    y = dropout(x, 0.25)
    y.sum().backward()
    rate = round(0.25 * 2**16) / 2**16
    expected = torch.where(y != 0, 1 / (1 - rate), 0.0)
    torch.testing.assert_close(x.grad, expected)
    torch.testing.assert_close(y, x.detach() * expected)


def test_seeded_identity_and_validation() -> None:
    x = torch.randn(10_000)
    torch.manual_seed(3)
    a = dropout(x, 0.1)
    torch.manual_seed(3)
    assert torch.equal(a, dropout(x, 0.1))
    assert not torch.equal(a, dropout(x, 0.1))  # the generator moved on
    assert dropout(x, 0.1, training=False) is x and dropout(x, 0.0) is x
    layer = Dropout(0.3).eval()
    assert layer(x) is x
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0)
    with pytest.raises(ValueError, match="dropout probability"):
        dropout(x, -0.1)


def test_bf16_input_keeps_its_dtype() -> None:
    y = dropout(torch.ones(1000, dtype=torch.bfloat16), 0.1)
    assert y.dtype == torch.bfloat16 and set(y.unique().tolist()) <= {0.0, float(torch.tensor(1 / 0.9).bfloat16())}


class _KeepAll(Dropout):
    """p > 0 (so attention takes its training path) but nothing dropped."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_written_out_training_attention_equals_sdpa() -> None:
    dims = t5.T5Dims(d_model=32, num_heads=4, d_kv=8, d_ff=64, dropout=0.1)
    attn = t5.Attention(dims)
    attn.dropout = _KeepAll(0.1)
    x, enc = torch.randn(3, 5, 32), torch.randn(3, 7, 32)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[0, :3] = False
    bias = t5.padding_bias(mask) + torch.randn(1, 4, 5, 7)
    k, v = attn.kv(enc)
    written_out = attn.train()(x, k, v, bias)
    sdpa = attn.eval()(x, k, v, bias)
    torch.testing.assert_close(written_out, sdpa, atol=1e-5, rtol=1e-5)


def test_casting_norm_outputs_once_changes_no_number(monkeypatch: pytest.MonkeyPatch) -> None:
    # under autocast each projection would cast the norm's fp32 output itself; casting once must give the same
    # forward numbers exactly
    torch.manual_seed(4)
    dims = t5.T5Dims(d_model=32, num_heads=4, d_kv=8, d_ff=64)
    enc, dec = t5.T5Encoder(dims, 2).eval(), t5.T5Decoder(dims, 2).eval()
    x, mask, y = torch.randn(2, 6, 32), torch.ones(2, 6, dtype=torch.bool), torch.randn(2, 3, 32)

    def run() -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            h = enc(x, mask)
            return dec(y, dec.start(h, mask))[0]

    once = run()
    monkeypatch.setattr(t5, "to_autocast", lambda x: x)
    assert torch.equal(once, run())


def test_sasrec_written_out_training_attention_equals_sdpa() -> None:
    from sidrec.models.sasrec import CausalSelfAttention, SASRecConfig

    attn = CausalSelfAttention(SASRecConfig(num_items=10, d_model=16, num_heads=2, dropout=0.2))
    attn.dropout = _KeepAll(0.2)
    x = torch.randn(3, 6, 16)
    allowed = torch.tril(torch.ones(6, 6, dtype=torch.bool)).expand(3, 1, 6, 6).clone()
    allowed[0, :, :, :2] = False
    allowed[0, :, torch.arange(6), torch.arange(6)] = True  # as SASRec builds it: a query always sees itself
    torch.testing.assert_close(attn.train()(x, allowed), attn.eval()(x, allowed), atol=1e-5, rtol=1e-5)


def test_training_without_dropout_is_the_eval_attention() -> None:
    attn = t5.Attention(t5.T5Dims(d_model=32, num_heads=4, d_kv=8, d_ff=64, dropout=0.0))
    x, enc = torch.randn(2, 3, 32), torch.randn(2, 5, 32)
    k, v = attn.kv(enc)
    bias = torch.randn(1, 4, 3, 5)
    torch.testing.assert_close(attn.train()(x, k, v, bias), attn.eval()(x, k, v, bias), atol=1e-5, rtol=1e-5)
