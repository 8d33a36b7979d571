"""A T5 (v1.0) encoder-decoder in plain PyTorch, numerically identical to transformers' ``T5Model``.

T5 v1.0 as in Raffel et al. (2020): pre-norm blocks with RMSNorm ("T5LayerNorm", no mean, no bias, computed
in fp32), attention without the 1/sqrt(d_kv) scaling, a learned relative position bias (bucketed,
bidirectional in the encoder, causal in the decoder) owned by the first layer of each stack and shared by the
later ones, cross attention without position bias, a ReLU feed-forward (wi -> relu -> dropout -> wo) and no
biases anywhere.

The stacks take embeddings, not token ids, so the caller owns the vocabulary (and may feed soft embeddings).
Attention runs through ``F.scaled_dot_product_attention`` with the position bias and the padding / causal mask
folded into one additive ``attn_mask`` and ``scale=1.0``; training writes the same math out, which is faster on the
CPU and gives the attention probabilities the cheaper dropout mask of ``sidrec.models.dropout``.

Parameter names against transformers (``T5Model.state_dict()``), i = block index:

=====================================  ===================================================================
ours                                   transformers
=====================================  ===================================================================
encoder.rel_bias.embedding.weight      encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight
encoder.blocks.i.attn_norm.weight      encoder.block.i.layer.0.layer_norm.weight
encoder.blocks.i.attn.{q,k,v,o}        encoder.block.i.layer.0.SelfAttention.{q,k,v,o}
encoder.blocks.i.ff_norm.weight        encoder.block.i.layer.1.layer_norm.weight
encoder.blocks.i.ff.{wi,wo}            encoder.block.i.layer.1.DenseReluDense.{wi,wo}
encoder.final_norm.weight              encoder.final_layer_norm.weight
decoder.rel_bias.embedding.weight      decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight
decoder.blocks.i.self_attn_norm        decoder.block.i.layer.0.layer_norm
decoder.blocks.i.self_attn.{q,k,v,o}   decoder.block.i.layer.0.SelfAttention.{q,k,v,o}
decoder.blocks.i.cross_attn_norm       decoder.block.i.layer.1.layer_norm
decoder.blocks.i.cross_attn.{q,k,v,o}  decoder.block.i.layer.1.EncDecAttention.{q,k,v,o}
decoder.blocks.i.ff_norm               decoder.block.i.layer.2.layer_norm
decoder.blocks.i.ff.{wi,wo}            decoder.block.i.layer.2.DenseReluDense.{wi,wo}
decoder.final_norm.weight              decoder.final_layer_norm.weight
=====================================  ===================================================================

(the token embedding lives in the caller and corresponds to ``shared.weight``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from sidrec.models.dropout import Dropout

# Additive mask for disallowed keys. Finite (unlike -inf or float32's min, which rounds to -inf in bf16) so
# that a row whose keys are all masked gets a uniform softmax instead of NaN; exp(-1e9) is 0 in every dtype.
MASK_VALUE = -1e9


@dataclass
class T5Dims:
    """Sizes shared by the encoder and decoder stacks.

    Args:
        d_model: width of the residual stream.
        num_heads: attention heads of ``d_kv`` dims each (num_heads * d_kv need not equal d_model).
        d_kv: per-head query/key/value width.
        d_ff: hidden width of the ReLU feed-forward.
        dropout: dropout rate (embeddings, sub-layer outputs, attention weights, FFN hidden, final output).
        rel_buckets: number of relative-position buckets.
        rel_max_distance: distances at or beyond this share the last bucket.
        eps: RMSNorm epsilon.

    Example:
        >>> dims = T5Dims(d_model=64, num_heads=4, d_kv=16, d_ff=128)
    """

    d_model: int
    num_heads: int
    d_kv: int
    d_ff: int
    dropout: float = 0.0
    rel_buckets: int = 32
    rel_max_distance: int = 128
    eps: float = 1e-6


class RMSNorm(nn.Module):
    """T5LayerNorm: x / rms(x) * weight, computed in fp32 (also under autocast), no mean, no bias."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        # fp32 weights (the autocast case) keep the output in fp32; a model cast to bf16 gets bf16 back
        return self.weight * x.type_as(self.weight)


def relative_position_bucket(
    relative_position: Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> Tensor:
    """Map key_pos - query_pos to a bucket (Mesh TensorFlow / T5 scheme).

    Half of the buckets hold exact small distances, the other half log-spaced distances up to
    ``max_distance``. Bidirectional: separate bucket halves for keys before / after the query. Causal: only
    keys at or before the query get distinct buckets (later keys are masked anyway).
    """
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = -torch.clamp(relative_position, max=0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # log(0) = -inf for distance 0 is harmless: those entries take the is_small branch. Same float op order as
    # transformers, because .long() truncates and a reordering could move a distance across a bucket edge.
    log_ratio = torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact)
    if_large = max_exact + (log_ratio * (num_buckets - max_exact)).long()
    if_large = torch.clamp(if_large, max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, if_large)


class RelativePositionBias(nn.Module):
    """Learned per-head scalar bias indexed by the bucket of (key position - query position)."""

    def __init__(self, dims: T5Dims, bidirectional: bool):
        super().__init__()
        self.embedding = nn.Embedding(dims.rel_buckets, dims.num_heads)
        self.bidirectional = bidirectional
        self.num_buckets = dims.rel_buckets
        self.max_distance = dims.rel_max_distance

    def forward(self, query_start: int, query_len: int, key_len: int) -> Tensor:
        """Bias for queries at positions query_start .. query_start+query_len-1 over keys 0 .. key_len-1.

        Returns (1, heads, query_len, key_len).
        """
        device = self.embedding.weight.device
        query_pos = torch.arange(query_start, query_start + query_len, device=device)
        key_pos = torch.arange(key_len, device=device)
        buckets = relative_position_bucket(
            key_pos[None, :] - query_pos[:, None], self.bidirectional, self.num_buckets, self.max_distance
        )  # (Tq, Tk)
        return self.embedding(buckets).permute(2, 0, 1).unsqueeze(0)  # (1, H, Tq, Tk)


def padding_bias(mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """(B, T) bool mask, True = real -> additive key mask (B, 1, 1, T): 0 if real, MASK_VALUE if pad.

    ``dtype``: the model's (its position bias's); fp32 under autocast, bf16 for a model cast to bf16, whose attention
    scores then stay bf16 instead of being promoted to fp32 by the mask.
    """
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return bias.masked_fill(~mask, MASK_VALUE)[:, None, None, :]


def to_autocast(x: Tensor) -> Tensor:
    """x in autocast's dtype when autocast is on (else unchanged): a norm's fp32 output cast once here, not once
    by each of the projections (q, k, v; wi; the cross-attention K/V of every layer) that read it."""
    device = x.device.type
    return x.to(torch.get_autocast_dtype(device)) if torch.is_autocast_enabled(device) else x


class Attention(nn.Module):
    """Multi-head attention without biases and without 1/sqrt(d_kv) scaling (T5 folds it into the init)."""

    def __init__(self, dims: T5Dims):
        super().__init__()
        inner = dims.num_heads * dims.d_kv
        self.q = nn.Linear(dims.d_model, inner, bias=False)
        self.k = nn.Linear(dims.d_model, inner, bias=False)
        self.v = nn.Linear(dims.d_model, inner, bias=False)
        self.o = nn.Linear(inner, dims.d_model, bias=False)
        self.num_heads = dims.num_heads
        self.d_kv = dims.d_kv
        self.dropout = Dropout(dims.dropout)  # on the attention probabilities

    def _split_heads(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, self.d_kv).transpose(1, 2)  # (B, H, T, d_kv)

    def kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of x (B, T, d_model), each (B, H, T, d_kv)."""
        return self._split_heads(self.k(x)), self._split_heads(self.v(x))

    def forward(self, x: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
        """x (B, Tq, d_model) attends to k, v (B, H, Tk, d_kv); bias broadcastable to (B, H, Tq, Tk)."""
        B, Tq, _ = x.shape
        q = self._split_heads(self.q(x))  # (B, H, Tq, d_kv)
        if self.training:
            # written out (as transformers' T5 does): SDPA's CPU training path with a learned bias is its math path
            # with extra masking work (slower, docs/benchmarks.md), and its dropout would use torch's slower mask
            scores = torch.matmul(q, k.transpose(-1, -2)) + bias  # (B, H, Tq, Tk), fp32 (the bias is)
            probs = self.dropout(scores.softmax(-1).to(v.dtype))
            y = torch.matmul(probs, v)  # (B, H, Tq, d_kv)
        else:
            # under autocast q is bf16 while the bias is fp32; SDPA needs one dtype
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=1.0)  # (B, H, Tq, d_kv)
        return self.o(y.transpose(1, 2).reshape(B, Tq, self.num_heads * self.d_kv))


class FeedForward(nn.Module):
    """wi -> ReLU -> dropout -> wo, no biases (T5 v1.0 DenseReluDense)."""

    def __init__(self, dims: T5Dims):
        super().__init__()
        self.wi = nn.Linear(dims.d_model, dims.d_ff, bias=False)
        self.wo = nn.Linear(dims.d_ff, dims.d_model, bias=False)
        self.dropout = Dropout(dims.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.wo(self.dropout(F.relu(self.wi(x))))


class EncoderBlock(nn.Module):
    def __init__(self, dims: T5Dims):
        super().__init__()
        self.attn_norm = RMSNorm(dims.d_model, dims.eps)
        self.attn = Attention(dims)
        self.ff_norm = RMSNorm(dims.d_model, dims.eps)
        self.ff = FeedForward(dims)
        self.dropout = Dropout(dims.dropout)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        h = to_autocast(self.attn_norm(x))
        x = x + self.dropout(self.attn(h, *self.attn.kv(h), bias))
        return x + self.dropout(self.ff(to_autocast(self.ff_norm(x))))


class DecoderBlock(nn.Module):
    def __init__(self, dims: T5Dims):
        super().__init__()
        self.self_attn_norm = RMSNorm(dims.d_model, dims.eps)
        self.self_attn = Attention(dims)
        self.cross_attn_norm = RMSNorm(dims.d_model, dims.eps)
        self.cross_attn = Attention(dims)
        self.ff_norm = RMSNorm(dims.d_model, dims.eps)
        self.ff = FeedForward(dims)
        self.dropout = Dropout(dims.dropout)

    def forward(
        self,
        x: Tensor,
        self_bias: Tensor,
        past_k: Tensor,
        past_v: Tensor,
        cross_k: Tensor,
        cross_v: Tensor,
        cross_bias: Tensor,
        group: int = 1,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x (M, L, d) are L new positions after the t cached ones in past_k/past_v (M, H, t, d_kv).

        cross_k/cross_v (M / group, H, T, d_kv) hold one encoder row per ``group`` consecutive decoder rows.

        Returns the new x and the self-attention keys/values of all t + L positions.
        """
        h = to_autocast(self.self_attn_norm(x))
        k, v = self.self_attn.kv(h)
        k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)  # (B, H, t + L, d_kv)
        x = x + self.dropout(self.self_attn(h, k, v, self_bias))
        # Cross attention has no position bias, so the `group` decoder rows sharing one encoder row (beams of one
        # user) can attend as group * L query positions of that row: the encoder K/V are never copied per beam.
        M, L, d = x.shape
        h = to_autocast(self.cross_attn_norm(x)).reshape(M // group, group * L, d)
        x = x + self.dropout(self.cross_attn(h, cross_k, cross_v, cross_bias).reshape(M, L, d))
        x = x + self.dropout(self.ff(to_autocast(self.ff_norm(x))))
        return x, k, v


class T5Encoder(nn.Module):
    """Bidirectional T5 encoder stack over embeddings.

    Example:
        >>> enc = T5Encoder(T5Dims(d_model=64, num_heads=4, d_kv=16, d_ff=128), num_layers=2)
        >>> h = enc(torch.randn(3, 7, 64), torch.ones(3, 7, dtype=torch.bool))  # (3, 7, 64)
    """

    def __init__(self, dims: T5Dims, num_layers: int):
        super().__init__()
        self.rel_bias = RelativePositionBias(dims, bidirectional=True)
        self.blocks = nn.ModuleList([EncoderBlock(dims) for _ in range(num_layers)])
        self.final_norm = RMSNorm(dims.d_model, dims.eps)
        self.dropout = Dropout(dims.dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, T, d_model) embeddings, mask (B, T) True = real token -> hidden states (B, T, d_model)."""
        T = x.shape[1]
        # one bias for all layers: relative positions + key padding
        bias = self.rel_bias(0, T, T) + padding_bias(mask, self.rel_bias.embedding.weight.dtype)  # (B, H, T, T)
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x, bias)
        return self.dropout(self.final_norm(x))


@dataclass
class DecoderCache:
    """Incremental decoder state for M decoder rows over B encoder rows, M = B * group.

    Decoder rows ``b * group .. b * group + group - 1`` belong to encoder row b (the beams of one user). The
    encoder side is stored once per encoder row and shared by its group, so expanding to beams copies only the
    small self-attention cache.

    Args:
        enc_mask: (B, T) encoder padding mask, True = real token.
        cross_k, cross_v: per decoder layer (B, heads, T, d_kv), keys/values of the encoder output.
        self_k, self_v: per decoder layer (M, heads, t, d_kv), self-attention keys/values of the t decoded
            positions.
        group: decoder rows per encoder row.

    Example:
        >>> dec = T5Decoder(T5Dims(d_model=8, num_heads=2, d_kv=4, d_ff=16), num_layers=1)
        >>> cache = dec.start(torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool))  # 2 encoder rows
        >>> beams = cache.expand(3)  # every row becomes 3 rows sharing its encoder K/V
        >>> beams = beams.reorder(torch.tensor([0, 0, 2, 3, 5, 5]))  # keep rows within each encoder row
        >>> beams.group, beams.cross_k[0].shape[0]  # the encoder K/V stay at 2 rows
        (3, 2)
    """

    enc_mask: Tensor
    cross_k: list[Tensor]
    cross_v: list[Tensor]
    self_k: list[Tensor]
    self_v: list[Tensor]
    group: int = 1

    @property
    def num_rows(self) -> int:
        return self.self_k[0].shape[0]

    @property
    def length(self) -> int:
        """Decoder positions processed so far (t)."""
        return self.self_k[0].shape[2]

    def _with_self(self, index: Tensor, group: int) -> DecoderCache:
        return DecoderCache(
            self.enc_mask,
            self.cross_k,
            self.cross_v,
            [t.index_select(0, index) for t in self.self_k],
            [t.index_select(0, index) for t in self.self_v],
            group,
        )

    def expand(self, n: int) -> DecoderCache:
        """Every decoder row becomes ``n`` consecutive rows; the encoder K/V are shared, not copied."""
        index = torch.arange(self.num_rows, device=self.enc_mask.device).repeat_interleave(n)
        return self._with_self(index, self.group * n)

    def reorder(self, index: Tensor) -> DecoderCache:
        """Rows ``index`` (B * g,) of the cache, the g new rows of encoder row b all taken from b's group.

        Beam reordering (g may differ from the current group when the beam widens). The encoder side is unchanged;
        only the self-attention cache is gathered.
        """
        return self._with_self(index, index.shape[0] // self.enc_mask.shape[0])

    def index_select(self, index: Tensor) -> DecoderCache:
        """New cache whose rows are ``self``'s rows ``index`` (M',) picked, reordered or duplicated in any way.

        General but copies the encoder K/V per row (the result has group 1); prefer ``expand``/``reorder``.
        """
        enc_rows = torch.div(index, self.group, rounding_mode="floor")

        def pick(tensors: list[Tensor], rows: Tensor) -> list[Tensor]:
            return [t.index_select(0, rows) for t in tensors]

        return DecoderCache(
            enc_mask=self.enc_mask.index_select(0, enc_rows),
            cross_k=pick(self.cross_k, enc_rows),
            cross_v=pick(self.cross_v, enc_rows),
            self_k=pick(self.self_k, index),
            self_v=pick(self.self_v, index),
        )


class T5Decoder(nn.Module):
    """Causal T5 decoder stack with cross attention; one code path for teacher forcing and cached stepping.

    Example:
        >>> dec = T5Decoder(T5Dims(d_model=64, num_heads=4, d_kv=16, d_ff=128), num_layers=2)
        >>> cache = dec.start(torch.randn(3, 7, 64), torch.ones(3, 7, dtype=torch.bool))
        >>> h, cache = dec(torch.randn(3, 4, 64), cache)  # teacher-forced: 4 positions at once, (3, 4, 64)
    """

    def __init__(self, dims: T5Dims, num_layers: int):
        super().__init__()
        self.rel_bias = RelativePositionBias(dims, bidirectional=False)
        self.blocks = nn.ModuleList([DecoderBlock(dims) for _ in range(num_layers)])
        self.final_norm = RMSNorm(dims.d_model, dims.eps)
        self.dropout = Dropout(dims.dropout)
        self.num_heads = dims.num_heads
        self.d_kv = dims.d_kv

    def start(self, enc: Tensor, enc_mask: Tensor) -> DecoderCache:
        """Empty cache for encoder output enc (B, T, d_model): cross-attention K/V computed once per layer."""
        enc = to_autocast(enc)
        cross = [block.cross_attn.kv(enc) for block in self.blocks]
        # empty self-attention K/V in the dtype of the projections (bf16 under autocast) so torch.cat keeps it
        empty = cross[0][0].new_zeros(enc.shape[0], self.num_heads, 0, self.d_kv)
        return DecoderCache(
            enc_mask=enc_mask,
            cross_k=[k for k, _ in cross],
            cross_v=[v for _, v in cross],
            self_k=[empty] * len(self.blocks),
            self_v=[empty] * len(self.blocks),
        )

    def forward(self, x: Tensor, cache: DecoderCache) -> tuple[Tensor, DecoderCache]:
        """Run L new positions x (M, L, d_model) after the cache's t positions.

        Returns hidden states (M, L, d_model) and a new cache extended to t + L positions (the input cache is
        not changed).
        """
        t, L = cache.length, x.shape[1]
        bias = self.rel_bias(t, L, t + L)  # (1, H, L, t + L)
        query_pos = torch.arange(t, t + L, device=x.device)
        key_pos = torch.arange(t + L, device=x.device)
        bias = bias.masked_fill(key_pos[None, :] > query_pos[:, None], MASK_VALUE)  # causal
        cross_bias = padding_bias(cache.enc_mask, self.rel_bias.embedding.weight.dtype)  # (B, 1, 1, T)
        x = self.dropout(x)
        self_k, self_v = [], []
        for i, block in enumerate(self.blocks):
            x, k, v = block(
                x, bias, cache.self_k[i], cache.self_v[i], cache.cross_k[i], cache.cross_v[i], cross_bias, cache.group
            )
            self_k.append(k)
            self_v.append(v)
        new_cache = DecoderCache(cache.enc_mask, cache.cross_k, cache.cross_v, self_k, self_v, cache.group)
        return self.dropout(self.final_norm(x)), new_cache
