"""train.compile: the compiled training loss and gradients equal the eager ones (slow on CPU: inductor builds C++)."""

import pytest
import torch

from sidrec.models.tiger import Tiger, TigerConfig
from sidrec.training.two_stage import LossModule

LEVELS = [8, 8, 4]


@pytest.mark.slow
def test_compiled_loss_and_gradients_match_eager():
    cfg = TigerConfig(level_sizes=LEVELS, d_model=16, num_heads=2, d_kv=8, d_ff=32, num_encoder_layers=1,
                      num_decoder_layers=1, dropout=0.0, user_buckets=8)
    g = torch.Generator().manual_seed(1)
    history = torch.stack([torch.randint(0, k, (6, 4), generator=g) for k in LEVELS], -1)
    history[:2, :2] = -1
    target = torch.stack([torch.randint(0, k, (6,), generator=g) for k in LEVELS], -1)
    eager = Tiger(cfg, generator=torch.Generator().manual_seed(0))
    compiled = Tiger(cfg, generator=torch.Generator().manual_seed(0))
    ids, mask = eager.encoder_inputs(history, torch.arange(6))

    ref = LossModule(eager)(ids, mask, target)
    ref.backward()
    out = torch.compile(LossModule(compiled))(ids, mask, target)
    out.backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
