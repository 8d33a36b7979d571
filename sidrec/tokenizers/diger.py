"""DIGER tokenizer (METHODS 5): an RQ-VAE whose code assignment is differentiable, so that the recommendation
loss trains the codebooks.

During joint training each level picks its code with Gumbel noise, ``y_soft = softmax((-d + s * g) / tau_g)``,
``index = argmax(y_soft)``, and hands the recommender a straight-through indicator
``Ind = onehot(index) - sg(y_soft) + y_soft``: hard in the forward pass, but its gradient reaches every codeword
through the distances ``d``. Uncertainty decay lets the noise fade as training settles (FrqUD: only samples whose
level-1 code is over-used are perturbed; SDUD: a learnable noise scale per level tied to the task loss).
``gumbel: false`` is the naive straight-through baseline (hard argmin, ``z + sg(z_hat - z)``), which METHODS 5
expects to collapse. At inference (eval mode, ``encode``) codes are the deterministic argmin, as in RQ-VAE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sidrec.tokenizers.base import Assignment, require
from sidrec.tokenizers.kmeans import squared_distances
from sidrec.tokenizers.rqvae import RQVAE, RQVAEConfig


@dataclass
class DIGERConfig(RQVAEConfig):
    """DIGER hyper-parameters: every RQ-VAE field (architecture and pre-training) plus the assignment noise.

    Paper values (METHODS 5): ``gumbel_tau=2``, FrqUD momentum 0.99 and hot threshold 1.5 / K, SDUD sigma init
    1.0 with lr 1e-3 and lambda 1.7. Our choices, where the paper is silent: FrqUD perturbs all levels of a hot
    sample; its EMA starts at the first batch's usage (not uniform, which would hide an initial skew for ~100
    steps); SDUD averages the wrapped loss over the levels' sigmas; the default decay is FrqUD.

    Args:
        gumbel: Gumbel assignment in training mode; ``False`` (with ``decay="none"``) is naive straight-through.
        gumbel_tau: tau_g, the softmax temperature.
        noise_scale: s, the scale of the Gumbel noise; with ``decay="sdud"`` the initial sigma of every level.
        decay: ``"none"`` (constant noise), ``"frqud"`` (frequency-based) or ``"sdud"`` (learnable sigma).
        frqud_momentum: momentum of the EMA of level-1 code usage.
        frqud_hot_factor: a level-1 code is hot when its EMA frequency exceeds ``frqud_hot_factor / K``.
        sdud_lambda: lambda in ``L / (2 (|sigma| + lambda)^2) + log(|sigma| + lambda)``.
        sigma_lr: learning rate of the SDUD sigmas (see ``DIGER.param_groups``).
        balance_weight: weight of the code-balance loss ``sum_l ||mean(y_soft_l) - 1/K||_1`` (0: off).
        noise_gap_scaled: multiply each level's noise by that level's batch-mean gap between the nearest and
            second-nearest codeword distance (ours). Unscaled noise is tiny next to level 1's gaps and large next
            to the deeper levels' (docs/results.md); scaled, each level's share of changed codes depends on
            ``noise_scale`` alone.
        reduction: as ``RQVAEConfig``; default ``"mean"``.

    Example:
        >>> cfg = DIGERConfig(codebook_size=256, latent_dim=128, decay="sdud")
        >>> cfg.gumbel_tau, cfg.reduction
        (2.0, 'mean')
    """

    gumbel: bool = True
    gumbel_tau: float = 2.0
    noise_scale: float = 1.0
    decay: Literal["none", "frqud", "sdud"] = "frqud"
    frqud_momentum: float = 0.99
    frqud_hot_factor: float = 1.5
    sdud_lambda: float = 1.7
    sigma_lr: float = 1e-3
    balance_weight: float = 0.0
    # DIGER's base is ETEGRec, whose RQ-VAE code uses F.mse_loss means and averages the levels: the scale on which
    # L_REC (weight 1) meets L_SQ when the recommendation loss trains the codebooks.
    reduction: Literal["sum", "mean"] = "mean"
    noise_gap_scaled: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.gumbel_tau > 0, "gumbel_tau", f"must be > 0, got {self.gumbel_tau}")
        require(self.noise_scale >= 0, "noise_scale", f"must be >= 0, got {self.noise_scale}")
        require(
            self.decay in ("none", "frqud", "sdud"),
            "decay",
            f"must be 'none', 'frqud' or 'sdud', got {self.decay!r}",
        )
        require(
            0 <= self.frqud_momentum < 1, "frqud_momentum", f"must be in [0, 1), got {self.frqud_momentum}"
        )
        require(self.frqud_hot_factor > 0, "frqud_hot_factor", f"must be > 0, got {self.frqud_hot_factor}")
        require(self.sdud_lambda > 0, "sdud_lambda", f"must be > 0, got {self.sdud_lambda}")
        require(self.sigma_lr > 0, "sigma_lr", f"must be > 0, got {self.sigma_lr}")
        require(self.balance_weight >= 0, "balance_weight", f"must be >= 0, got {self.balance_weight}")
        # |sigma| has no gradient at 0, so an SDUD sigma started there would never move.
        require(
            self.decay != "sdud" or self.noise_scale > 0,
            "noise_scale",
            "must be > 0 with decay 'sdud' (it is the initial sigma)",
        )
        require(
            self.gumbel or self.decay == "none",
            "decay",
            f"needs gumbel: true (the naive straight-through path has no noise to decay), got {self.decay!r}",
        )
        require(
            self.gumbel or self.balance_weight == 0,
            "balance_weight",
            "needs gumbel: true (the balance loss acts on y_soft)",
        )


def gumbel_noise(
    shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None = None
) -> Tensor:
    """Standard Gumbel samples ``-log(E)``, ``E ~ Exp(1)``, on ``device``.

    Drawn from ``generator`` (on its own device, then moved) or, when None, from torch's seeded default RNG of
    ``device``.
    """
    source = device if generator is None else generator.device
    e = torch.empty(shape, device=source).exponential_(generator=generator)
    return -e.clamp_min(torch.finfo(e.dtype).tiny).log().to(device)


class DIGER(RQVAE):
    """RQ-VAE with differentiable (Gumbel, straight-through) code assignment for joint training.

    ``fit``, ``forward``, ``encode`` and save/load are RQ-VAE's: the tokenize stage pre-trains DIGER exactly as
    an RQ-VAE. Joint training calls ``assign`` in training mode, adds ``wrap_task_loss`` around the
    recommender's loss and builds its optimiser from ``param_groups``.

    Args:
        config: a ``DIGERConfig``.
        input_dim: D, the embedding dimension.

    Example:
        >>> x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))  # 64 items, D = 16
        >>> cfg = DIGERConfig(codebook_size=8, latent_dim=4, hidden_dims=[16], epochs=2, decay="sdud")
        >>> tok = DIGER(cfg, input_dim=16).fit(x, seed=0, device="cpu", progress=False)  # pre-trained as an RQ-VAE
        >>> a = tok.train().assign(x[:8])  # training mode: Gumbel noise, straight-through one-hots
        >>> code_table = torch.randn(3, 8, 5, requires_grad=True)  # (L, K, h): a recommender's SID token rows
        >>> rows = torch.einsum("blk,lkh->blh", a.onehot, code_table)  # L_REC on rows reaches the codebooks
        >>> loss = tok.wrap_task_loss(rows.pow(2).mean()) + a.loss
        >>> loss.backward()
    """

    name = "diger"

    def __init__(self, config: DIGERConfig, input_dim: int) -> None:
        super().__init__(config, input_dim)
        # Registered only for the decay that uses them, so a saved state dict holds exactly what the config needs.
        if config.decay == "frqud":
            self.register_buffer("usage_ema", torch.zeros(config.codebook_size))
            self.register_buffer("usage_steps", torch.zeros((), dtype=torch.long))
        if config.decay == "sdud":
            self.sigma = nn.Parameter(torch.full((config.num_levels,), config.noise_scale))
        # Per level, the summed share of codes the noise changed over the training-mode assigns since the last
        # joint_stats(), and their count: on the device (no host sync per step), not saved.
        self.register_buffer("changed_sum", torch.zeros(config.num_levels), persistent=False)
        self.register_buffer("changed_steps", torch.zeros((), dtype=torch.long), persistent=False)

    def reset_noise_state(self) -> None:
        """Forget the FrqUD usage and changed-code statistics and put the SDUD sigmas back to ``noise_scale``."""
        with torch.no_grad():
            self.changed_sum.zero_()
            self.changed_steps.zero_()
            if self.config.decay == "frqud":
                self.usage_ema.zero_()
                self.usage_steps.zero_()
            if self.config.decay == "sdud":
                self.sigma.fill_(self.config.noise_scale)

    def fit(self, emb: Tensor, **kwargs: Any) -> DIGER:
        """Pre-train as an RQ-VAE (``RQVAE.fit``, same arguments), with fresh noise state."""
        self.reset_noise_state()
        super().fit(emb, **kwargs)
        return self

    @torch.no_grad()
    def update_usage(self, codes: Tensor) -> Tensor:
        """FrqUD: fold a batch's deterministic level-1 codes ``(B,)`` into the usage EMA; return the hot ones.

        Returns:
            ``(B,)`` bool, True where the sample's code has EMA frequency above ``frqud_hot_factor / K``.
        """
        cfg = self.config
        require(cfg.decay == "frqud", "decay", f"update_usage needs 'frqud', got {cfg.decay!r}")
        freq = torch.bincount(codes, minlength=cfg.codebook_size).float() / max(len(codes), 1)  # (K,)
        ema = cfg.frqud_momentum * self.usage_ema + (1 - cfg.frqud_momentum) * freq
        # torch.where rather than an `if` on the step count: no host sync per step on GPU.
        self.usage_ema.copy_(torch.where(self.usage_steps == 0, freq, ema))
        self.usage_steps.add_(1)
        return self.usage_ema[codes] > cfg.frqud_hot_factor / cfg.codebook_size

    def assign(self, x: Tensor, items: Tensor | None = None, generator: torch.Generator | None = None) -> Assignment:
        """Quantize a batch ``x (B, D)`` for joint training.

        Training mode with ``gumbel``: per level, Gumbel-perturbed softmax over minus squared distances,
        straight-through indicator, quantized vector ``Ind . E_l``, next residual from it. Otherwise (eval mode,
        or the naive baseline) ``RQVAE.assign``: argmin codes, constant one-hot, quantized ``z + sg(z_hat - z)``.

        Args:
            x: item embeddings ``(B, D)`` on the tokenizer's device.
            items: the catalogue rows of ``x`` (unused; the common ``assign`` contract).
            generator: source of the Gumbel noise; default torch's RNG of the tokenizer's device, which the
                training loop seeds and saves in its checkpoints (so a resumed run draws the same noise).

        Returns:
            ``Assignment``; ``loss`` is the RQ-VAE loss of the chosen codes (``terms``: ``recon`` of the decoded
            quantized vector, ``rq`` codebook and commitment terms) plus the weighted ``balance`` loss.
        """
        cfg = self.config
        if not (self.training and cfg.gumbel):
            return super().assign(x, items, generator)
        # float32 even under the recommender's bf16 autocast (the tokenizer is small): bf16 latents and distances
        # flip near-ties, so noise-free samples would get codes other than encode()'s argmin.
        with torch.autocast(x.device.type, enabled=False):
            xs = self.standardize(x.float())
            z = self.encoder(xs)  # (B, d)
            codes, onehot, logits, z_hat, terms = self._gumbel_levels(z, generator)
            # The decoder reads Ind . E (no straight-through to z), so reconstruction trains the codebooks too.
            x_hat = self.decoder(z_hat)  # (B, D)
            terms = {"recon": self.recon_loss(xs, x_hat), **terms}
        loss = torch.stack(list(terms.values())).sum()
        return Assignment(codes, onehot, logits, z, z_hat, x_hat, loss, terms)

    def _gumbel_levels(
        self, z: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """The levels of ``assign``: codes (B, L), indicators (B, L, K), logits (B, L, K), z_hat (B, d), terms."""
        cfg = self.config
        codebooks = self.quantizer.codebooks  # (L, K, d)
        residual, z_hat = z, torch.zeros_like(z)
        codes, onehots, logits_all, rq, balance, changed = [], [], [], [], [], []
        scale: Tensor | float = cfg.noise_scale
        for level in range(cfg.num_levels):
            logits = -squared_distances(residual, codebooks[level])  # (B, K)
            if cfg.decay == "frqud" and level == 0:
                hot = self.update_usage(logits.argmax(dim=1))  # (B,)
                scale = cfg.noise_scale * hot.to(logits.dtype)[:, None]  # (B, 1), kept for every level
            elif cfg.decay == "sdud":
                scale = self.sigma[level].abs()
            level_scale = scale
            if cfg.noise_gap_scaled:
                nearest = (-logits.detach()).topk(2, dim=1, largest=False).values  # (B, 2) two smallest distances
                level_scale = scale * (nearest[:, 1] - nearest[:, 0]).mean()
            noise = gumbel_noise(tuple(logits.shape), logits.device, generator)  # (B, K)
            y_soft = F.softmax((logits + level_scale * noise) / cfg.gumbel_tau, dim=1)  # (B, K)
            code = y_soft.argmax(dim=1)  # (B,)
            changed.append((code != logits.detach().argmax(dim=1)).float().mean())  # vs this level's argmin
            onehot = F.one_hot(code, cfg.codebook_size).to(y_soft.dtype) - y_soft.detach() + y_soft
            chosen = onehot @ codebooks[level]  # (B, d): the hard codeword, with gradient to all of them
            hard = codebooks[level][code]  # (B, d), for the codebook and commitment terms
            rq.append(self.quantizer.level_loss(residual, hard))
            balance.append((y_soft.mean(dim=0) - 1.0 / cfg.codebook_size).abs().sum())
            codes.append(code)
            onehots.append(onehot)
            logits_all.append(logits)
            z_hat = z_hat + chosen
            residual = residual - chosen
        with torch.no_grad():
            self.changed_sum.add_(torch.stack(changed))
            self.changed_steps.add_(1)
        terms = {"rq": self.quantizer.combine_levels(rq)}
        if cfg.balance_weight > 0:
            terms["balance"] = cfg.balance_weight * self.quantizer.combine_levels(balance)
        stack = torch.stack
        return stack(codes, dim=1), stack(onehots, dim=1), stack(logits_all, dim=1), z_hat, terms

    def joint_stats(self) -> dict[str, Any]:
        """The current noise and its effect, to follow its decay in the training log.

        Returns:
            ``"noise.changed"``: per level, the share of codes the Gumbel noise changed (vs that level's argmin on
            the same residual), averaged over the training-mode ``assign`` calls since the last call (then reset).
            SDUD adds ``"noise.sigma"``: ``|sigma_l|`` per level. FrqUD adds ``"noise.hot_codes"`` (share of
            level-1 codes that are hot) and ``"noise.perturbed"`` (EMA share of samples whose code is hot, i.e.
            perturbed). ``{}`` before any noisy assignment.

        Example:
            >>> tok = DIGER(DIGERConfig(codebook_size=8, latent_dim=4, hidden_dims=[16], decay="frqud"), input_dim=16)
            >>> _ = tok.train().assign(torch.randn(32, 16))  # as in a joint training step
            >>> sorted(tok.joint_stats())
            ['noise.changed', 'noise.hot_codes', 'noise.perturbed']
        """
        cfg = self.config
        stats: dict[str, Any] = {}
        steps = int(self.changed_steps)
        if steps:
            stats["noise.changed"] = (self.changed_sum / steps).tolist()
            self.changed_sum.zero_()
            self.changed_steps.zero_()
        if cfg.decay == "sdud":
            stats["noise.sigma"] = self.sigma.detach().abs().tolist()
        if cfg.decay == "frqud" and int(self.usage_steps) > 0:
            hot = self.usage_ema > cfg.frqud_hot_factor / cfg.codebook_size  # (K,)
            stats["noise.hot_codes"] = float(hot.float().mean())
            stats["noise.perturbed"] = float(self.usage_ema[hot].sum())
        return stats

    def wrap_task_loss(self, task_loss: Tensor) -> Tensor:
        """SDUD: ``mean_l [ L / (2 (|sigma_l| + lambda)^2) + log(|sigma_l| + lambda) ]``; unchanged otherwise.

        Each term is minimal at ``|sigma_l| + lambda = sqrt(L)``, so the noise scale follows the task loss and
        decays as the recommender converges.

        Example:
            >>> cfg = DIGERConfig(codebook_size=8, latent_dim=4, hidden_dims=[16], decay="sdud")  # sigma 1, lambda 1.7
            >>> round(DIGER(cfg, input_dim=16).wrap_task_loss(torch.tensor(4.0)).item(), 4)  # 4 / (2 2.7^2) + log 2.7
            1.2676
        """
        if self.config.decay != "sdud":
            return task_loss
        s = self.sigma.abs() + self.config.sdud_lambda  # (L,)
        return (task_loss / (2 * s.pow(2)) + s.log()).mean()

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimiser parameter groups: everything at ``lr``; with SDUD the sigmas at ``sigma_lr``, no decay.

        Example:
            >>> tok = DIGER(DIGERConfig(codebook_size=8, latent_dim=4, hidden_dims=[16], decay="sdud"), input_dim=16)
            >>> [group["lr"] for group in tok.param_groups(1e-4)]  # the sigmas at sigma_lr
            [0.0001, 0.001]
        """
        if self.config.decay != "sdud":
            return super().param_groups(lr)
        rest = [p for p in self.parameters() if p is not self.sigma]
        return [
            {"params": rest, "lr": lr},
            {"params": [self.sigma], "lr": self.config.sigma_lr, "weight_decay": 0.0},
        ]
