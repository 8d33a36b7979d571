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
            squared error + L_rq) or ``"mse+contrastive"`` (both), to reproduce the paper's finding that L_cl alone
            beats MSE and that adding MSE to it hurts.
        reduction: ``"mean"`` (default, the ``F.mse_loss`` means of common RQ-VAE code, levels averaged) puts
            the squared error and L_rq on the scale of ``alpha * L_cl`` (MSE of standardised inputs ~0.2-1,
            L_cl <= log B), so ``"mse+contrastive"`` really adds both. ``"sum"`` (METHODS 1.1) sums over
            dimensions: the summed MSE (~90-450 at D = 384-768) then buries ``alpha * L_cl`` (<= 0.7), and with L_rq
            summed over 96 dimensions the encoder can shrink the latents onto one codeword (docs/results.md).

    Example:
        >>> cfg = CoSTConfig(recon="mse+contrastive", epochs=200)
        >>> cfg.codebook_size, cfg.latent_dim, cfg.reduction
        (64, 96, 'mean')
    """

    latent_dim: int = 96
    codebook_size: int = 64
    hidden_dims: list[int] = field(default_factory=lambda: [512, 256, 128])
    epochs: int = 100
    alpha: float = 0.1
    tau: float = 0.1
    recon: Literal["contrastive", "mse", "mse+contrastive"] = "contrastive"
    reduction: Literal["sum", "mean"] = "mean"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.alpha > 0, "alpha", f"must be > 0, got {self.alpha}")
        require(self.tau > 0, "tau", f"must be > 0, got {self.tau}")
        require(self.recon in RECON_MODES, "recon", f"must be one of {', '.join(RECON_MODES)}, got {self.recon!r}")


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
        >>> x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))  # 64 items, D = 16
        >>> cfg = CoSTConfig(codebook_size=8, latent_dim=4, hidden_dims=[16], epochs=2)
        >>> tok = CoST(cfg, input_dim=16).fit(x, seed=0, device="cpu", progress=False)
        >>> tok.semantic_ids(x).shape  # (N, 4): 3 learned codes + dedup token
        torch.Size([64, 4])
    """

    name = "cost"

    def _reset_parameters(self) -> None:
        super()._reset_parameters()
        # The RQ-VAE starts its decoder's output layer at zero, so that the first reconstruction gradients do not
        # throw the latents away from the fresh codebooks; where MSE is part of the loss we keep that (recon
        # "mse" with reduction "sum" is then exactly the RQ-VAE). With L_cl alone a zero reconstruction has no
        # direction and the cosine's gradient there is unbounded, so that layer starts like the encoder's output
        # layer (docs/results.md compares the two starts).
        if self.config.recon == "contrastive":
            nn.init.kaiming_normal_(self.decoder[-1].weight, nonlinearity="linear")

    def _loss_terms(
        self,
        xs: Tensor,
        x_hat: Tensor,
        q: QuantizerOutput,
        items: Tensor | None,
        generator: torch.Generator | None,
    ) -> dict[str, Tensor]:
        """``rq`` (codebook + commitment), plus ``cl`` = alpha * L_cl and/or ``recon`` (squared error) per ``recon``.

        Both reduced per ``reduction``; the inputs and reconstructions are the standardised ``(B, D)``.
        """
        cfg = self.config
        terms = {"rq": q.loss}
        if cfg.recon != "mse":
            terms["cl"] = cfg.alpha * contrastive_reconstruction_loss(xs, x_hat, cfg.tau)
        if cfg.recon != "contrastive":
            terms["recon"] = self.recon_loss(xs, x_hat)
        return terms
