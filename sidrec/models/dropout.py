"""Dropout with a cheaper random mask on CPU.

torch's CPU ``bernoulli_`` draws one double per element on one thread, and it was the largest single op of a
TIGER-size training step on 2 cores. Here one draw of 64 uniform bits (``random_`` over the whole int64 range)
serves four elements: each 16-bit lane, read as a signed integer, is compared with a threshold (timings against
``F.dropout``: docs/benchmarks.md, ``benchmarks/probes/dropout_cpu.py``). On other devices torch's fused dropout is used
unchanged.

The drop rate is ``p`` rounded to a multiple of 2**-16 (an error of at most 7.7e-6), and kept values are scaled by
1 / (1 - that rate) in x's dtype, so the expected output equals the input as with ``F.dropout``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

_LANE = 1 << 16  # a lane holds a uniform integer in [-2**15, 2**15)
_INT64_MIN = -(1 << 63)  # random_(_INT64_MIN, None) draws all 64 bits (plain random_() leaves the sign bit 0)


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Zero each element of x with probability p (quantized to 2**-16) and scale the rest to keep the mean.

    Args:
        x: any tensor.
        p: drop probability in [0, 1).
        training: identity when False (as ``F.dropout``).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> y = dropout(torch.ones(100_000), 0.1)
        >>> round((y == 0).float().mean().item(), 2), round(y.mean().item(), 2)
        (0.1, 1.0)
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    threshold = round(p * _LANE)
    if threshold == 0:
        return x
    n = x.numel()
    lanes = torch.empty((n + 3) // 4, dtype=torch.int64).random_(_INT64_MIN, None).view(torch.int16)[:n]  # (n,)
    keep = lanes.ge(threshold - _LANE // 2)  # True with probability 1 - threshold / 2**16
    # via uint8: torch's bool -> bf16 cast is ~5x slower than uint8 -> bf16 on CPU
    noise = keep.view(torch.uint8).to(x.dtype).mul_(_LANE / (_LANE - threshold))  # 0 or 1 / (1 - rate)
    return x * noise.view(x.shape)  # autograd saves `noise`; the backward is one multiply


class Dropout(nn.Module):
    """``nn.Dropout`` with the cheaper CPU mask of :func:`dropout`.

    Example:
        >>> layer = Dropout(0.1).eval()
        >>> x = torch.randn(2, 3)
        >>> bool((layer(x) == x).all())  # identity in eval mode
        True
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
