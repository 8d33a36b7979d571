"""TIGER recommender (Rajput et al., NeurIPS 2023): a T5 encoder-decoder that reads a user's history as
semantic-ID tokens and generates the next item's SID, one level at a time.

Vocabulary (one shared embedding table for encoder and decoder):

    0                         pad
    1                         decoder start
    offset[l] + code          code of SID level l, offset[0] = 2, offset[l+1] = offset[l] + level_sizes[l]
    user_offset + bucket      hashed user token, user_offset = 2 + sum(level_sizes), bucket < user_buckets

The encoder input is ``[user token] + flattened SIDs of the last <= max_history items`` (oldest first),
left-padded, so pads never sit between real tokens and relative positions do not depend on the amount of
padding. The decoder input is ``[start, c_0, .., c_{L-2}]``; position l is scored by a per-level head over the
K_l codes of level l only.

Our choices (not fixed by the paper): the user hash ``(u * 2654435761) % 2**32 % user_buckets`` (Knuth's
multiplicative hash); per-level output heads initialised N(0, d_model**-0.5) (T5's untied lm_head uses std
1.0, which gives logits of std sqrt(d_model) at init); other weights use T5's initialisation.

Size at the defaults (level_sizes [256, 256, 256, 8], 2000 user buckets): 4,914,560 parameters. METHODS 1.3
quotes ~13M from the paper, but the stated architecture (d_model 128, 6 x 64 heads, FFN 1024, 4 + 4 layers)
cannot reach it with a SID vocabulary: an encoder layer has 4 * 128 * 384 + 2 * 128 * 1024 + 2 * 128 = 459,008
weights, a decoder layer 655,744, the 2,778-token embedding 355,584, the heads 99,328, the two relative biases and
final norms 640. The paper's 13M is reached with the stock T5 vocabulary of 32,128 tokens, untied in and out
(input embedding and lm_head 32,128 x 128 each): 4,914,560 - 355,584 - 99,328 + 2 * 4,112,384 = 12,684,416.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from sidrec.models.io import load_module, save_module
from sidrec.models.t5 import (
    Attention,
    DecoderCache,
    FeedForward,
    RelativePositionBias,
    T5Decoder,
    T5Dims,
    T5Encoder,
)

PAD = 0
START = 1
NUM_SPECIAL = 2
USER_HASH_MULTIPLIER = 2654435761

__all__ = ["DecoderCache", "Tiger", "TigerConfig", "load_model", "save_model"]


@dataclass
class TigerConfig:
    """Sizes of a TIGER model.

    Args:
        level_sizes: codes per SID position including the dedup position, e.g. [256, 256, 256, 5].
        d_model, num_heads, d_kv, d_ff: T5 widths (inner attention width is num_heads * d_kv).
        num_encoder_layers, num_decoder_layers: stack depths.
        dropout: T5 dropout rate.
        user_buckets: number of hashed user tokens; 0 disables the user token.
        max_history: most recent history items kept by ``encoder_inputs``.
        rel_buckets, rel_max_distance: T5 relative position buckets.
        logit_temperature: logits are divided by it (LETTER's ranking-guided generation uses 0.7..1.0).
        latent_dim: size of the sequence latent ``sequence_latent`` (ETEGRec's z_E, SODA's latent user source);
            0 = no latent head.
        tie_heads: score level l by the inner product of the decoder state with that level's own token
            embeddings (ETEGRec) instead of a separate per-level head (TIGER); see ``head_weight``.

    Example:
        >>> cfg = TigerConfig(level_sizes=[256, 256, 256, 8])
    """

    level_sizes: list[int]
    d_model: int = 128
    num_heads: int = 6
    d_kv: int = 64
    d_ff: int = 1024
    num_encoder_layers: int = 4
    num_decoder_layers: int = 4
    dropout: float = 0.1
    user_buckets: int = 2000
    max_history: int = 20
    rel_buckets: int = 32
    rel_max_distance: int = 128
    logit_temperature: float = 1.0
    latent_dim: int = 0
    tie_heads: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.level_sizes, list | tuple) or len(self.level_sizes) == 0:
            raise ValueError(
                f"level_sizes: expected a non-empty list of positive ints, got {self.level_sizes!r}"
            )
        self.level_sizes = list(self.level_sizes)
        for k in self.level_sizes:
            if not _is_int(k) or k < 1:
                raise ValueError(f"level_sizes: expected positive ints, got {self.level_sizes!r}")
        positive = ["d_model", "num_heads", "d_kv", "d_ff", "num_encoder_layers", "num_decoder_layers"]
        positive += ["max_history", "rel_buckets", "rel_max_distance"]
        for name in positive:
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if not _is_int(self.latent_dim) or self.latent_dim < 0:
            raise ValueError(f"latent_dim: expected an int >= 0, got {self.latent_dim!r}")
        if not _is_int(self.user_buckets) or self.user_buckets < 0:
            raise ValueError(f"user_buckets: expected an int >= 0, got {self.user_buckets!r}")
        if self.rel_buckets < 4:
            raise ValueError(
                f"rel_buckets: expected >= 4 (exact and log-spaced halves), got {self.rel_buckets}"
            )
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a number in [0, 1), got {self.dropout!r}")
        if not isinstance(self.tie_heads, bool):
            raise ValueError(f"tie_heads: expected a bool, got {self.tie_heads!r}")
        if not _is_number(self.logit_temperature) or self.logit_temperature <= 0:
            raise ValueError(f"logit_temperature: expected a positive number, got {self.logit_temperature!r}")

    @property
    def vocab_size(self) -> int:
        return NUM_SPECIAL + sum(self.level_sizes) + self.user_buckets


def mlp_head(d_model: int, out_dim: int) -> nn.Sequential:
    """Linear(d_model, d_model) -> ReLU -> Linear(d_model, out_dim): the alignment heads (our choice of shape)."""
    return nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU(), nn.Linear(d_model, out_dim))


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


class Tiger(nn.Module):
    """TIGER: T5 encoder-decoder over SID tokens with one output head per SID level.

    Args:
        cfg: model sizes.
        generator: RNG for the weight initialisation (None = torch's global RNG).

    Example:
        >>> model = Tiger(TigerConfig(level_sizes=[8, 8, 3], d_model=32, num_heads=2, d_kv=16, d_ff=64))
        >>> history = torch.tensor([[[-1, -1, -1], [1, 2, 0], [3, 4, 1]]])  # (B=1, H=2, Lc=3), oldest first
        >>> ids, mask = model.encoder_inputs(history, torch.tensor([7]))
        >>> logits = model(ids, mask, torch.tensor([[5, 6, 0]]))  # [(1, 8), (1, 8), (1, 3)]
    """

    def __init__(self, cfg: TigerConfig, generator: torch.Generator | None = None):
        super().__init__()
        self.cfg = cfg
        dims = T5Dims(
            d_model=cfg.d_model,
            num_heads=cfg.num_heads,
            d_kv=cfg.d_kv,
            d_ff=cfg.d_ff,
            dropout=cfg.dropout,
            rel_buckets=cfg.rel_buckets,
            rel_max_distance=cfg.rel_max_distance,
        )
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder = T5Encoder(dims, cfg.num_encoder_layers)
        self.decoder = T5Decoder(dims, cfg.num_decoder_layers)
        # tied: level l is scored with its rows of ``embed`` (head_weight), so there are no head parameters
        self.heads = None if cfg.tie_heads else nn.ModuleList(
            [nn.Linear(cfg.d_model, k, bias=False) for k in cfg.level_sizes]
        )
        starts = torch.tensor([NUM_SPECIAL] + cfg.level_sizes[:-1]).cumsum(0)
        self.register_buffer("level_offsets", starts, persistent=False)  # (Lc,) first token id of each level
        self.register_buffer("level_sizes", torch.tensor(cfg.level_sizes), persistent=False)  # (Lc,)
        self.user_offset = NUM_SPECIAL + sum(cfg.level_sizes)
        self._add_heads(cfg)
        self._init_weights(generator)

    def _add_heads(self, cfg: TigerConfig) -> None:
        """Create the optional MLP heads (subclasses add theirs); ``_init_weights`` initialises them after."""
        if cfg.latent_dim:
            self.latent_head = mlp_head(cfg.d_model, cfg.latent_dim)

    @torch.no_grad()
    def _init_weights(self, generator: torch.Generator | None) -> None:
        d = self.cfg.d_model
        inner = self.cfg.num_heads * self.cfg.d_kv
        self.embed.weight.normal_(0.0, 1.0, generator=generator)
        for module in self.modules():
            if isinstance(module, Attention):
                # T5's init absorbs the missing 1/sqrt(d_kv) attention scaling into the query weights
                module.q.weight.normal_(0.0, (d * self.cfg.d_kv) ** -0.5, generator=generator)
                module.k.weight.normal_(0.0, d**-0.5, generator=generator)
                module.v.weight.normal_(0.0, d**-0.5, generator=generator)
                module.o.weight.normal_(0.0, inner**-0.5, generator=generator)
            elif isinstance(module, FeedForward):
                module.wi.weight.normal_(0.0, d**-0.5, generator=generator)
                module.wo.weight.normal_(0.0, self.cfg.d_ff**-0.5, generator=generator)
            elif isinstance(module, RelativePositionBias):
                module.embedding.weight.normal_(0.0, d**-0.5, generator=generator)
        for head in self.heads or []:
            head.weight.normal_(0.0, d**-0.5, generator=generator)
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:  # the MLP heads (T5 has no biases)
                module.weight.normal_(0.0, module.in_features**-0.5, generator=generator)
                module.bias.zero_()

    @property
    def num_levels(self) -> int:
        return len(self.cfg.level_sizes)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _check_levels(self, codes: Tensor, name: str) -> None:
        if codes.shape[-1] != self.num_levels:
            raise ValueError(
                f"{name}: last dimension must be the {self.num_levels} SID levels, got {tuple(codes.shape)}"
            )

    def _raise_bad_code(self, codes: Tensor, bad: Tensor, name: str) -> None:
        """ValueError naming ``name``, the level and value of the first out-of-range code in bad (..., Lc)."""
        level = int(bad.nonzero()[0, -1])
        raise ValueError(
            f"{name}: codes of level {level} must be in [0, {self.cfg.level_sizes[level]}), "
            f"got {codes[..., level][bad[..., level]][0].item()}"
        )

    def _check_codes(self, codes: Tensor, name: str) -> None:
        """codes (..., Lc): ValueError naming ``name`` unless every code c of level l has 0 <= c < K_l."""
        self._check_levels(codes, name)
        bad = (codes < 0) | (codes >= self.level_sizes)
        if bad.any():
            self._raise_bad_code(codes, bad, name)

    def _user_tokens(self, users: Tensor) -> Tensor:
        """Token ids (B,) of user indices (B,) >= 0: user_offset + (u * 2654435761) % 2**32 % user_buckets."""
        # int64 products wrap modulo 2**64, a multiple of 2**32, so the result is exact for every int64 user
        return self.user_offset + (users.long() * USER_HASH_MULTIPLIER) % 2**32 % self.cfg.user_buckets

    def encoder_inputs(self, history: Tensor, users: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Encoder token ids and mask from SID histories.

        Args:
            history: (B, H, Lc) SIDs of past items, most recent last, left-padded with rows of -1. Only the
                last ``max_history`` rows are used.
            users: (B,) user indices, or None. The user token is added when given and user_buckets > 0.

        Returns:
            ids (B, T) and mask (B, T) (True = real token), T = H' * Lc (+ 1 with the user token), H' = min(H,
            max_history); layout ``[pad .., user, SID tokens of the oldest .. newest item]``.
        """
        if history.dim() != 3:
            raise ValueError(f"history: expected (B, H, Lc), got shape {tuple(history.shape)}")
        self._check_levels(history, "history")
        history = history[:, -self.cfg.max_history :]
        B, H, Lc = history.shape
        use_users = users is not None and self.cfg.user_buckets > 0
        if use_users and users.shape != (B,):
            raise ValueError(f"users: expected shape ({B},), got {tuple(users.shape)}")
        real = history[..., 0] >= 0  # (B, H) real item rows
        partial = (history == -1) == real[
            ..., None
        ]  # (B, H, Lc) -1 inside an item row, or a code in a pad row
        gap = real[:, :-1] & ~real[:, 1:]  # (B, H - 1) a pad row after an item
        bad = ((history < 0) | (history >= self.level_sizes)) & real[..., None]  # (B, H, Lc) out of range
        flags = [partial.any(), gap.any(), bad.any()] + ([(users < 0).any()] if use_users else [])
        if torch.stack(flags).any():  # one host sync for all input checks
            if partial.any():
                raise ValueError("history: each row must be a full SID (codes >= 0) or all -1 (padding)")
            if gap.any():
                raise ValueError("history: padding rows (-1) must come before all real items (left padding)")
            if bad.any():
                self._raise_bad_code(history, bad, "history")
            raise ValueError("users: user indices must be >= 0")
        tokens = torch.where(history >= 0, history + self.level_offsets, PAD)  # (B, H, Lc)
        ids = tokens.flatten(1)  # (B, H * Lc)
        if use_users:
            ids = torch.cat([ids.new_full((B, 1), PAD), ids], dim=1)  # (B, 1 + H * Lc)
            # with P pad tokens in the history, index P of the widened row is the slot before the first item
            first_real = (~real).sum(1) * Lc  # (B,)
            ids = ids.scatter(1, first_real[:, None], self._user_tokens(users.to(ids.device))[:, None])
        return ids, ids != PAD

    def decoder_inputs(self, target: Tensor) -> Tensor:
        """Teacher-forcing decoder tokens (B, Lc) = [start, c_0, .., c_{Lc-2}] for target SIDs (B, Lc)."""
        tokens = target[:, :-1] + self.level_offsets[:-1]  # (B, Lc - 1)
        return torch.cat([tokens.new_full((target.shape[0], 1), START), tokens], dim=1)

    def sid_embeddings(self, onehot: Tensor) -> Tensor:
        """Embeddings of soft SID tokens: ``onehot (..., n, K) -> (..., n, d_model)``, level l = ``onehot[..., l, :]``.

        Level l's embedding is ``onehot[..., l, :] @ (the K_l token rows of level l)``: for a hard one-hot this
        equals the index lookup of ``embed``, and the gradient also flows into ``onehot`` (so a straight-through
        tokenizer assignment receives the recommendation loss). Levels 0..n-1 must all have K codes.
        """
        n, k = onehot.shape[-2:]
        if n > self.num_levels or any(self.cfg.level_sizes[level] != k for level in range(n)):
            raise ValueError(
                f"onehot: expected (..., n, K) with levels 0..n-1 of size K, got {tuple(onehot.shape)} for "
                f"level sizes {self.cfg.level_sizes}"
            )
        offsets = self.level_offsets[:n, None] + torch.arange(k, device=onehot.device)  # (n, K) token ids
        rows = self.embed.weight[offsets]  # (n, K, d)
        return torch.einsum("...lk,lkd->...ld", onehot.to(rows.dtype), rows)

    def embed_inputs(self, ids: Tensor, history_onehot: Tensor | None = None) -> Tensor:
        """Encoder input embeddings (B, T, d_model) of ``encoder_inputs`` ids.

        Args:
            ids: (B, T) from ``encoder_inputs``; its last H' * Lc positions are the history's SID tokens.
            history_onehot: optional (B, H, n, K) soft codes of the first n levels of the history rows given to
                ``encoder_inputs`` (padding rows are ignored); those tokens are embedded by ``sid_embeddings``.
        """
        x = self.embed(ids)  # (B, T, d)
        if history_onehot is None:
            return x
        onehot = history_onehot[:, -self.cfg.max_history :]  # the rows encoder_inputs kept
        B, H, n, _ = onehot.shape
        Lc, d = self.num_levels, x.shape[-1]
        if H * Lc > ids.shape[1]:
            raise ValueError(f"history_onehot: {H} history rows do not fit encoder inputs of length {ids.shape[1]}")
        hist = x[:, ids.shape[1] - H * Lc :].view(B, H, Lc, d)
        real = ids[:, ids.shape[1] - H * Lc :].view(B, H, Lc)[:, :, :1, None] != PAD  # (B, H, 1, 1)
        soft = torch.where(real, self.sid_embeddings(onehot), hist[:, :, :n])  # (B, H, n, d)
        hist = torch.cat([soft, hist[:, :, n:]], dim=2).flatten(1, 2)  # (B, H * Lc, d)
        return torch.cat([x[:, : ids.shape[1] - H * Lc], hist], dim=1)

    def encode(self, ids: Tensor, mask: Tensor, history_onehot: Tensor | None = None) -> Tensor:
        """Encoder hidden states (B, T, d_model); ``history_onehot`` as in ``embed_inputs``."""
        return self.encoder(self.embed_inputs(ids, history_onehot), mask)

    def hidden_states(
        self,
        ids: Tensor,
        mask: Tensor,
        target: Tensor,
        history_onehot: Tensor | None = None,
        target_onehot: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Teacher-forced (encoder states (B, T, d_model), decoder states (B, Lc, d_model)).

        ``history_onehot`` (B, H, n, K) and ``target_onehot`` (B, n, K) optionally embed the SID tokens of the
        first n levels softly (``sid_embeddings``): identical values for hard one-hots, with gradients into them.
        """
        self._check_codes(target, "target")
        enc = self.encode(ids, mask, history_onehot)
        x = self.embed(self.decoder_inputs(target))  # (B, Lc, d): [start, c_0, .., c_{Lc-2}]
        if target_onehot is not None:
            n = min(target_onehot.shape[1], self.num_levels - 1)  # the last level is never a decoder input
            x = torch.cat([x[:, :1], self.sid_embeddings(target_onehot[:, :n]), x[:, 1 + n :]], dim=1)
        dec, _ = self.decoder(x, self.decoder.start(enc, mask))
        return enc, dec

    def sequence_latent(self, enc: Tensor, mask: Tensor) -> Tensor:
        """z_E = MLP(mean of the real encoder states): (B, T, d_model), (B, T) -> (B, latent_dim) (ETEGRec)."""
        if not self.cfg.latent_dim:
            raise ValueError("sequence_latent: the model has no latent head (latent_dim = 0)")
        weights = mask.to(enc.dtype)[..., None]  # (B, T, 1)
        pooled = (enc * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # (B, d_model)
        return self.latent_head(pooled)

    def head_weight(self, level: int) -> Tensor:
        """The output projection ``(K_level, d_model)`` of SID ``level``: logits are ``h @ head_weight(level).T``.

        Untied: the level's own head. Tied (``tie_heads``): the level's K rows of the token embedding ``embed``,
        times d_model**-0.5. ETEGRec's code scores level l by ``decoder_state @ token_embeddings[l].weight.T``, the
        same table that embeds level l's tokens in the encoder and decoder inputs (the paper's "inner product with
        the vocabulary embedding matrix E"), so the recommendation loss trains those embeddings through the output
        too. The factor is ours, T5's own for tied embeddings (HF ``tie_word_embeddings`` scales the decoder output
        by it): with T5's N(0, 1) embeddings it keeps the logits of std ~1 at init that the untied heads have
        (ETEGRec instead draws every weight N(0, 0.02)).
        """
        if self.heads is not None:
            return self.heads[level].weight
        first = int(self.level_offsets[level])
        return self.embed.weight[first : first + self.cfg.level_sizes[level]] * self.cfg.d_model**-0.5

    def level_logits(self, h: Tensor, level: int) -> Tensor:
        """Logits (..., K_level) of decoder states h (..., d_model) at SID ``level``, fp32: ``h @ head_weight.T``.

        Not divided by ``logit_temperature``: LETTER's temperature shapes the training loss only (``rec_loss``), its
        code decodes with the plain logits.
        """
        if self.heads is not None:
            return self.heads[level](h).float()
        return F.linear(h, self.head_weight(level)).float()

    def forward(self, ids: Tensor, mask: Tensor, target: Tensor) -> list[Tensor]:
        """Teacher forcing: per-level logits [(B, K_0), (B, K_1), ..] for target SIDs (B, Lc)."""
        _, dec = self.hidden_states(ids, mask, target)
        return self.all_level_logits(dec)

    def all_level_logits(self, dec: Tensor) -> list[Tensor]:
        """Per-level logits [(B, K_0), (B, K_1), ..] of teacher-forced decoder states (B, Lc, d_model)."""
        return [self.level_logits(dec[:, level], level) for level in range(self.num_levels)]

    def rec_loss(self, logits: list[Tensor], target: Tensor) -> Tensor:
        """Cross-entropy of per-level logits / ``logit_temperature`` against target SIDs (B, Lc), summed over
        levels / Lc, batch mean (LETTER's ranking-guided generation: the temperature acts in training only)."""
        tau = self.cfg.logit_temperature
        return sum(F.cross_entropy(lg / tau, target[:, level]) for level, lg in enumerate(logits)) / len(logits)

    def loss(self, ids: Tensor, mask: Tensor, target: Tensor) -> Tensor:
        """Cross-entropy summed over SID levels / Lc, averaged over the batch (scalar)."""
        return self.rec_loss(self(ids, mask, target), target)

    @torch.no_grad()
    def score_sids(self, ids: Tensor, mask: Tensor, sids: Tensor, chunk_rows: int = 4096) -> Tensor:
        """Reference scorer: log-probability of every candidate SID for every input row.

        Args:
            ids, mask: (B, T) encoder inputs.
            sids: (M, Lc) candidate SIDs.
            chunk_rows: decoder rows (B x candidates) processed at once.

        Returns:
            (B, M): sum over levels of log_softmax(logits) at each candidate's code, teacher-forced per
            candidate.
        """
        self._check_codes(sids, "sids")
        B, M = ids.shape[0], sids.shape[0]
        base = self.start_decoding(ids, mask)  # B rows
        tokens = self.decoder_inputs(sids)  # (M, Lc)
        step = max(1, chunk_rows // B)
        scores = []
        for start in range(0, M, step):
            chunk = sids[start : start + step]  # (c, Lc)
            c = chunk.shape[0]
            # decoder row b * c + j scores candidate j for input row b
            cache = base.expand(c)
            x = self.embed(tokens[start : start + step]).repeat(B, 1, 1)  # (B * c, Lc, d)
            dec, _ = self.decoder(x, cache)  # (B * c, Lc, d)
            codes = chunk.repeat(B, 1)  # (B * c, Lc)
            logp = torch.zeros(B * c, device=ids.device)
            for level in range(self.num_levels):
                log_probs = self.level_logits(dec[:, level], level).log_softmax(-1)  # (B * c, K_level)
                logp = logp + log_probs.gather(1, codes[:, level, None])[:, 0]
            scores.append(logp.view(B, c))
        return torch.cat(scores, dim=1)

    def start_decoding(self, ids: Tensor, mask: Tensor) -> DecoderCache:
        """Run the encoder and precompute every decoder layer's cross-attention K/V; the cache has B rows."""
        return self.decoder.start(self.encode(ids, mask), mask)

    def decode_step(
        self, cache: DecoderCache, prev_codes: Tensor | None, level: int
    ) -> tuple[Tensor, DecoderCache]:
        """One decoder step for every row of the cache.

        Args:
            cache: state after ``level`` steps (from ``start_decoding`` for level 0).
            prev_codes: None at level 0 (the start token is fed); else (M,) codes chosen at level - 1.
            level: SID level whose logits are returned.

        Returns:
            logits (M, K_level) (fp32, not divided by logit_temperature) and the cache extended by one position.
        """
        if not 0 <= level < self.num_levels:
            raise ValueError(f"level: expected 0 <= level < {self.num_levels}, got {level}")
        if cache.length != level:
            raise ValueError(
                f"level: the cache holds {cache.length} decoded positions, so level must be {cache.length}, "
                f"got {level}"
            )
        M = cache.num_rows
        if level == 0:
            if prev_codes is not None:
                raise ValueError("prev_codes: must be None at level 0 (the start token is fed)")
            tokens = torch.full((M, 1), START, dtype=torch.long, device=cache.enc_mask.device)
        else:
            if prev_codes is None or prev_codes.shape != (M,):
                shape = None if prev_codes is None else tuple(prev_codes.shape)
                raise ValueError(f"prev_codes: expected shape ({M},) at level {level}, got {shape}")
            k = self.cfg.level_sizes[level - 1]
            if ((prev_codes < 0) | (prev_codes >= k)).any():
                raise ValueError(f"prev_codes: codes of level {level - 1} must be in [0, {k})")
            tokens = (prev_codes + self.level_offsets[level - 1])[:, None]  # (M, 1)
        h, cache = self.decoder(self.embed(tokens), cache)  # (M, 1, d)
        return self.level_logits(h[:, 0], level), cache


def save_model(model: Tiger, directory: str | Path) -> None:
    """Atomically write ``model.safetensors`` and ``model.json`` (the TigerConfig) into ``directory``."""
    save_module(model, directory)


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> Tiger:
    """Load a model written by ``save_model``; bad config keys or mismatched weights raise ValueError.

    Example:
        >>> model = load_model("runs/tiger/best")  # doctest: +SKIP
    """
    return load_module(Tiger, TigerConfig, directory, required=("level_sizes",), device=device)
