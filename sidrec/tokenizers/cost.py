"""CoST tokenizer (METHODS 4): the RQ-VAE of METHODS 1.1 trained with a contrastive reconstruction loss.

L_CoST = alpha * L_cl + L_rq, where L_rq is the codebook + commitment terms of the residual quantiser and
L_cl = -log( exp(cos(x_i, x_hat_i) / tau) / sum_j exp(cos(x_i, x_hat_j) / tau) ) over the batch: each item's
reconstruction must be closer (in angle) to its own input than the other items' reconstructions are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sidrec.tokenizers.base import QuantizerOutput, require
from sidrec.tokenizers.rqvae import RQVAE, RQVAEConfig

RECON_MODES = ("contrastive", "mse", "mse+contrastive")


@dataclass
class CoSTConfig(RQVAEConfig):
    """CoST hyper-parameters: those of ``RQVAEConfig`` with CoST's defaults, plus the contrastive loss.

    Defaults follow METHODS 4: encoder 512-256-128 -> latent 96, 3 levels x 64 codes, k-means init, 100 epochs,
    alpha 0.1, tau 0.1, beta 0.25.

    Args:
        alpha: weight of the contrastive term L_cl.
        tau: temperature of the cosine similarities.
        recon: ``"contrastive"`` (the paper: alpha * L_cl + L_rq), ``"mse"`` (the RQ-VAE loss of METHODS 1.1:
            summed squared error + L_rq) or ``"mse+contrastive"`` (both), to reproduce the paper's finding that
            L_cl alone beats MSE and that adding MSE to it hurts.
        rq_reduction: how the codebook + commitment terms reduce over the latent dimensions: ``"mean"`` (ours,
            default; the ``F.mse_loss`` of common RQ-VAE code) or ``"sum"`` (METHODS 1.1, our RQ-VAE). With
            ``"sum"`` over 96 dimensions these terms outweigh ``alpha * L_cl`` about a hundredfold: on the
            Instruments co-occurrence embeddings the encoder then shrinks the latents onto one codeword within 5
            epochs (1 of 64 level-1 codes used, 99.9% collisions), while ``"mean"`` keeps 97% / 88% / 77% of
            the codes in use after 20 epochs.

    Example:
        >>> CoSTConfig(recon="mse+contrastive", epochs=200)
    """

    latent_dim: int = 96
    codebook_size: int = 64
    hidden_dims: list[int] = field(default_factory=lambda: [512, 256, 128])
    epochs: int = 100
    alpha: float = 0.1
    tau: float = 0.1
    recon: Literal["contrastive", "mse", "mse+contrastive"] = "contrastive"
    rq_reduction: Literal["mean", "sum"] = "mean"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.alpha > 0, "alpha", f"must be > 0, got {self.alpha}")
        require(self.tau > 0, "tau", f"must be > 0, got {self.tau}")
        require(self.recon in RECON_MODES, "recon", f"must be one of {', '.join(RECON_MODES)}, got {self.recon!r}")
        require(
            self.rq_reduction in ("mean", "sum"), "rq_reduction", f"must be mean or sum, got {self.rq_reduction!r}"
        )


def contrastive_reconstruction_loss(x: Tensor, x_hat: Tensor, tau: float) -> Tensor:
    """In-batch InfoNCE over cosine similarities of inputs and reconstructions.

    Args:
        x: inputs ``(B, D)``.
        x_hat: their reconstructions ``(B, D)``.
        tau: temperature.

    Returns:
        Scalar: cross-entropy of ``cos(x_i, x_hat_j) / tau`` (B, B) with target j = i.

    Example:
        >>> x = torch.eye(4)
        >>> bool(contrastive_reconstruction_loss(x, x, 0.1) < contrastive_reconstruction_loss(x, x.roll(1, 0), 0.1))
        True
    """
    logits = F.normalize(x, dim=-1) @ F.normalize(x_hat, dim=-1).T / tau  # (B, B)
    return F.cross_entropy(logits, torch.arange(len(x), device=x.device))


class CoST(RQVAE):
    """RQ-VAE trained with CoST's contrastive reconstruction loss (``recon`` selects the paper's ablations).

    Inputs and reconstructions are compared in the standardised input space, the space the decoder outputs.

    Args:
        config: a ``CoSTConfig``.
        input_dim: D, the embedding dimension.

    Example:
        >>> tok = CoST(CoSTConfig(), input_dim=384).fit(item_emb, seed=0, device="cpu")
        >>> sids = tok.semantic_ids(item_emb)  # (N, 4): 3 learned codes + dedup token
    """

    name = "cost"

    def _reset_parameters(self) -> None:
        super()._reset_parameters()
        # The RQ-VAE starts its decoder's output layer at zero, so that the first reconstruction gradients do not
        # throw the latents away from the fresh codebooks; where MSE is part of the loss we keep that (recon
        # "mse" with rq_reduction "sum" is then exactly the RQ-VAE). With L_cl alone a zero reconstruction has no
        # direction and the cosine's gradient there is unbounded, so that layer starts like the encoder's output
        # layer. Measured on Instruments (100 epochs, recon "mse", rq_reduction "sum"): from a He start 5% of the
        # level-1 codes stayed in use (91% collisions), from the zero start 80% (11.5%).
        if self.config.recon == "contrastive":
            nn.init.kaiming_normal_(self.decoder[-1].weight, nonlinearity="linear")

    def forward(self, x: Tensor) -> QuantizerOutput:
        """Returns ``QuantizerOutput(quantized (B, d), codes (B, L), loss, reconstruction (B, D))``.

        ``loss`` = codebook + commitment terms (reduced over dimensions per ``rq_reduction``), plus
        ``alpha * L_cl`` and/or the summed squared error per ``recon``.
        """
        cfg = self.config
        xs = self.standardize(x)
        z = self.encoder(xs)  # (B, d)
        q = self.quantizer(z)
        x_hat = self.decoder(q.quantized)  # (B, D)
        # The quantiser sums its terms over the d latent dimensions; dividing by d turns that into a mean.
        loss = q.loss / cfg.latent_dim if cfg.rq_reduction == "mean" else q.loss
        if cfg.recon != "mse":
            loss = loss + cfg.alpha * contrastive_reconstruction_loss(xs, x_hat, cfg.tau)
        if cfg.recon != "contrastive":
            loss = loss + (xs - x_hat).pow(2).sum(-1).mean()
        return QuantizerOutput(q.quantized, q.codes, loss, x_hat)
