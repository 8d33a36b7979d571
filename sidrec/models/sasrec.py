"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over item IDs (METHODS 7).

A baseline that scores every item directly, and the source of the collaborative item embeddings that
LETTER and ETEGRec quantise. Item index ``i`` is embedded by row ``i + 1`` of one table (row 0 = padding);
the same table scores the next item (tied weights), so ``item_embeddings()`` is the space the model ranks in.

Histories arrive left-padded with -1, most recent item last. Positions are counted from the right end (the
most recent item always has position ``max_len - 1``), so a history gives the same state whatever padding
width it arrives in. Real positions never attend to padding; a padded position attends only to itself, which
keeps every attention row non-empty (an all-masked row makes softmax NaN) without touching real positions.

Our choices (not fixed by the paper): pre-LN blocks with a final LayerNorm, item rows initialised
N(0, 1 / d_model) so that tied logits start with unit scale, and the SASRec input scaling by sqrt(d_model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from sidrec.models.dropout import Dropout
from sidrec.models.io import load_module, save_module

LOSSES = ("ce", "bce")


@dataclass
class SASRecConfig:
    """SASRec sizes and training loss.

    Args:
        num_items: number of items N (items are 0-based indices < N).
        d_model: embedding and hidden size.
        num_layers: transformer blocks.
        num_heads: attention heads (must divide ``d_model``).
        max_len: longest history read; longer histories keep their most recent ``max_len`` items.
        dropout: dropout on the input embeddings, attention weights and residual branches.
        loss: ``"ce"`` (softmax over all items) or ``"bce"`` (the target against one uniformly sampled
            negative, as in the paper).

    Example:
        >>> cfg = SASRecConfig(num_items=12101, d_model=64, loss="ce")
    """

    num_items: int
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 2
    max_len: int = 50
    dropout: float = 0.2
    loss: str = "ce"

    def __post_init__(self) -> None:
        if self.num_items < 2:
            raise ValueError(f"SASRecConfig.num_items must be >= 2, got {self.num_items}")
        if self.d_model < 1 or self.num_heads < 1 or self.d_model % self.num_heads:
            raise ValueError(f"SASRecConfig.d_model ({self.d_model}) must be a positive multiple of "
                             f"num_heads ({self.num_heads})")
        if self.num_layers < 1:
            raise ValueError(f"SASRecConfig.num_layers must be >= 1, got {self.num_layers}")
        if self.max_len < 1:
            raise ValueError(f"SASRecConfig.max_len must be >= 1, got {self.max_len}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"SASRecConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.loss not in LOSSES:
            raise ValueError(f"SASRecConfig.loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention restricted by a boolean mask (causal and padding, built once per batch)."""

    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.dropout = Dropout(cfg.dropout)  # on the attention probabilities
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        """x (B, L, d); allowed (B, 1, L, L) bool, True where a query may attend to a key."""
        B, L, d = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.num_heads, d // self.num_heads)  # (B, L, 3, h, dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, h, L, dh)
        if self.training and self.dropout.p > 0:  # SDPA's dropout path is this math with torch's slower CPU mask
            scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B, h, L, L)
            probs = self.dropout(scores.masked_fill(~allowed, float("-inf")).softmax(-1))
            y = torch.matmul(probs.to(v.dtype), v)  # (B, h, L, dh)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)  # (B, h, L, dh)
        return self.proj(y.transpose(1, 2).reshape(B, L, d))


class Block(nn.Module):
    """Pre-LN transformer block; the feed-forward keeps SASRec's width d -> d -> d with ReLU."""

    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        d = cfg.d_model
        self.ffn = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))
        self.drop = Dropout(cfg.dropout)

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.ln1(x), allowed))
        return x + self.drop(self.ffn(self.ln2(x)))


class SASRec(nn.Module):
    """Next-item model over item IDs: ``scores(history)`` ranks all N items.

    Example:
        >>> model = SASRec(SASRecConfig(num_items=100, d_model=32))
        >>> history = torch.tensor([[-1, -1, 3, 7], [1, 2, 3, 4]])  # left-padded, most recent last
        >>> model.scores(history).shape
        torch.Size([2, 100])
    """

    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.num_items + 1, cfg.d_model, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)
        self.drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.num_layers)])
        self.ln_f = nn.LayerNorm(cfg.d_model)
        nn.init.normal_(self.item_emb.weight, std=cfg.d_model**-0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def hidden_states(self, history: Tensor) -> Tensor:
        """States of all positions (B, L, d), L = min(H, max_len), of a history (B, H) left-padded with -1."""
        history = history[:, -self.cfg.max_len :]  # keep the most recent max_len items
        B, L = history.shape
        valid = history >= 0  # (B, L)
        pos = torch.arange(self.cfg.max_len - L, self.cfg.max_len, device=history.device)  # right-aligned
        x = self.item_emb(history + 1) * math.sqrt(self.cfg.d_model) + self.pos_emb(pos)  # (B, L, d)
        x = self.drop(x)
        causal = torch.ones(L, L, dtype=torch.bool, device=history.device).tril()  # (L, L)
        eye = torch.eye(L, dtype=torch.bool, device=history.device)
        allowed = (causal & (valid[:, None, :] | eye)).unsqueeze(1)  # (B, 1, L, L)
        for block in self.blocks:
            x = block(x, allowed)
        return self.ln_f(x)

    def forward(self, history: Tensor) -> Tensor:
        """The state after the most recent item (B, d); a history (B, H) left-padded with -1."""
        return self.hidden_states(history)[:, -1]

    def scores(self, history: Tensor) -> Tensor:
        """Score of every item as the next one (B, N): the state dotted with the (tied) item embeddings."""
        return self(history) @ self.item_emb.weight[1:].T

    def loss(self, history: Tensor, target: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Mean next-item loss for history (B, H) -> target (B,) item indices.

        ``"ce"``: cross-entropy over all N items. ``"bce"``: -log s(pos) - log(1 - s(neg)) with one negative
        per example drawn uniformly from the other N - 1 items with ``generator`` (on the model's device, or
        None for the global RNG).
        """
        if self.cfg.loss == "ce":
            return F.cross_entropy(self.scores(history), target)
        h = self(history)  # (B, d)
        device = generator.device if generator is not None else target.device
        shift = torch.randint(1, self.cfg.num_items, target.shape, generator=generator, device=device)
        negative = (target + shift.to(target.device)) % self.cfg.num_items  # never the target  (B,)
        pos = (h * self.item_emb(target + 1)).sum(-1)  # (B,)
        neg = (h * self.item_emb(negative + 1)).sum(-1)  # (B,)
        return (F.softplus(-pos) + F.softplus(neg)).mean()

    def item_embeddings(self) -> Tensor:
        """The item rows of the tied embedding table (N, d), detached (row i = item i)."""
        return self.item_emb.weight[1:].detach().clone()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def save_sasrec(model: SASRec, directory: str | Path) -> None:
    """Atomically write ``model.safetensors`` and ``model.json`` (the SASRecConfig) into ``directory``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     save_sasrec(SASRec(SASRecConfig(num_items=10, d_model=8)), d)
        ...     load_sasrec(d).cfg.num_items
        10
    """
    save_module(model, directory)


def load_sasrec(directory: str | Path, device: str | torch.device = "cpu") -> SASRec:
    """Load a model written by ``save_sasrec``; bad config keys or mismatched weights raise ValueError.

    Example:
        >>> model = load_sasrec("runs/beauty/sasrec/model")  # doctest: +SKIP
    """
    return load_module(SASRec, SASRecConfig, directory, required=("num_items",), device=device)
