"""DIGER tokenizer (METHODS 5): an RQ-VAE whose code assignment is differentiable, trained jointly with the
recommender after its RQ-VAE pre-training.

As DIGER's reference code (``junchen-fu/DIGER``, ``vq.py`` / ``trainer.py``): during joint training each level
picks its code with Gumbel noise, ``y_soft = softmax((-d + s * g) / tau_g)``, ``index = argmax(y_soft)``, and
quantises with the straight-through indicator ``Ind = onehot(index) - sg(y_soft) + y_soft``: hard in the forward
pass, its gradient reaches every codeword through the distances ``d``. The joint tokenizer loss is the latent
reconstruction ``mse(z_hat, z)`` (no decoder) plus the VQ loss of ``Ind . E``. With ``sk_epsilon > 0`` the
distances of a batch are centred onto [-1, 1] (the logits the noise is added to) and the noise-free codes are
Sinkhorn-balanced over the batch, in the training forward and, over the whole catalogue, in the code table
(``encode``). Uncertainty decay lets the noise fade as training settles (FrqUD: only samples whose level-1 code is
over-used are perturbed; SDUD: a learnable noise scale per level tied to the task loss). ``gumbel: false`` is the
naive straight-through baseline (hard argmin, ``z + sg(z_hat - z)``), which METHODS 5 expects to collapse.
The recommender reads the hard codes of the per-epoch table (``schedule.soft_codes: false``), as the reference;
``soft_codes: true`` (ours) feeds it the indicators so that L_REC reaches the codebooks too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sidrec.tokenizers.base import Assignment, require
from sidrec.tokenizers.kmeans import squared_distances
from sidrec.tokenizers.residual import sinkhorn_codes
from sidrec.tokenizers.rqvae import RQVAE, RQVAEConfig


@dataclass
class DIGERConfig(RQVAEConfig):
    """DIGER hyper-parameters: every RQ-VAE field (architecture and pre-training) plus the assignment noise.

    Paper and reference-code values (METHODS 5, ``run_FrqUD.sh`` / ``run_SDUD.sh``): ``gumbel_tau=2``, FrqUD
    momentum 0.99 and hot threshold 1.5 / K (its EMA starts uniform, a sample's hotness is read before its batch
    updates the EMA, and all levels of a hot sample are perturbed), SDUD sigma init 1.0 with lr 1e-3 and lambda
    1.7 (the wrapped loss reads the levels' mean sigma), Sinkhorn epsilon 0.003 on every level; the default decay
    is FrqUD.

    Args:
        gumbel: Gumbel assignment in training mode; ``False`` (with ``decay="none"``) is naive straight-through.
        gumbel_tau: tau_g, the softmax temperature.
        noise_scale: s, the scale of the Gumbel noise; with ``decay="sdud"`` the initial sigma of every level.
        decay: ``"none"`` (constant noise), ``"frqud"`` (frequency-based) or ``"sdud"`` (learnable sigma).
        frqud_momentum: momentum of the EMA of level-1 code usage.
        frqud_hot_factor: a level-1 code is hot when its EMA frequency exceeds ``frqud_hot_factor / K``.
        sdud_lambda: lambda in ``L / (2 (|sigma| + lambda)^2) + log(|sigma| + lambda)``.
        sigma_lr: learning rate of the SDUD sigmas (see ``DIGER.param_groups``).
        balance_weight: weight of the code-balance loss ``mean_l ||mean(y_soft_l) - 1/K||_1`` (0: off; the
            reference's default, 0.1, applies in its SDUD script, which does not set it; FrqUD sets 0).
        sk_epsilon: Sinkhorn epsilon of the noise-free codes (training forward and code table) on distances
            centred onto [-1, 1], which are then also the logits the noise is added to; 0: argmin codes and raw
            minus squared distances as logits (ours before the reference was followed).
        sk_iters: Sinkhorn iterations.
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
    sk_epsilon: float = 0.003
    sk_iters: int = 50

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
        require(self.sk_epsilon >= 0, "sk_epsilon", f"must be >= 0, got {self.sk_epsilon}")
        require(self.sk_iters >= 1, "sk_iters", f"must be >= 1, got {self.sk_iters}")
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

    ``fit``, ``forward`` and save/load are RQ-VAE's: the tokenize stage pre-trains DIGER exactly as an RQ-VAE
    (the reference starts from such a checkpoint). ``encode`` (the code table) is Sinkhorn-balanced over the
    catalogue with ``sk_epsilon > 0``. Joint training calls ``assign`` in training mode, adds ``wrap_task_loss``
    around the recommender's loss and builds its optimiser from ``param_groups``.

    Args:
        config: a ``DIGERConfig``.
        input_dim: D, the embedding dimension.

    Example:
        >>> x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))  # 64 items, D = 16
        >>> cfg = DIGERConfig(codebook_size=8, latent_dim=4, hidden_dims=[16], epochs=2, decay="sdud")
        >>> tok = DIGER(cfg, input_dim=16).fit(x, seed=0, device="cpu", progress=False)  # pre-trained as an RQ-VAE
        >>> a = tok.train().assign(x[:8])  # training mode: Gumbel noise, straight-through one-hots
        >>> code_table = torch.randn(3, 8, 5, requires_grad=True)  # (L, K, h): a recommender's SID token rows
        >>> rows = torch.einsum("blk,lkh->blh", a.onehot, code_table)  # soft_codes (ours): L_REC reaches the codebooks
        >>> loss = tok.wrap_task_loss(rows.pow(2).mean()) + a.loss
        >>> loss.backward()
    """

    name = "diger"

    def __init__(self, config: DIGERConfig, input_dim: int) -> None:
        super().__init__(config, input_dim)
        # Registered only for the decay that uses them, so a saved state dict holds exactly what the config needs.
        if config.decay == "frqud":
            self.register_buffer("usage_ema", torch.full((config.codebook_size,), 1.0 / config.codebook_size))
            self.register_buffer("usage_steps", torch.zeros((), dtype=torch.long))
        if config.decay == "sdud":
            self.sigma = nn.Parameter(torch.full((config.num_levels,), config.noise_scale))
        # Per level, the summed share of codes the noise changed over the training-mode assigns since the last
        # joint_stats(), and their count: on the device (no host sync per step), not saved.
        self.register_buffer("changed_sum", torch.zeros(config.num_levels), persistent=False)
        self.register_buffer("changed_steps", torch.zeros((), dtype=torch.long), persistent=False)

    def reset_noise_state(self) -> None:
        """Forget the FrqUD usage (back to uniform) and changed-code statistics; SDUD sigmas back to ``noise_scale``."""
        with torch.no_grad():
            self.changed_sum.zero_()
            self.changed_steps.zero_()
            if self.config.decay == "frqud":
                self.usage_ema.fill_(1.0 / self.config.codebook_size)
                self.usage_steps.zero_()
            if self.config.decay == "sdud":
                self.sigma.fill_(self.config.noise_scale)

    def fit(self, emb: Tensor, **kwargs: Any) -> DIGER:
        """Pre-train as an RQ-VAE (``RQVAE.fit``, same arguments), with fresh noise state."""
        self.reset_noise_state()
        super().fit(emb, **kwargs)
        return self

    def hot(self, codes: Tensor) -> Tensor:
        """FrqUD: ``(B,)`` bool, True where the level-1 code's EMA frequency exceeds ``frqud_hot_factor / K``."""
        cfg = self.config
        require(cfg.decay == "frqud", "decay", f"hot needs 'frqud', got {cfg.decay!r}")
        return self.usage_ema[codes] > cfg.frqud_hot_factor / cfg.codebook_size

    @torch.no_grad()
    def update_usage(self, codes: Tensor) -> None:
        """FrqUD: fold a batch's noise-free level-1 codes ``(B,)`` into the usage EMA."""
        cfg = self.config
        require(cfg.decay == "frqud", "decay", f"update_usage needs 'frqud', got {cfg.decay!r}")
        freq = torch.bincount(codes, minlength=cfg.codebook_size).float() / max(len(codes), 1)  # (K,)
        self.usage_ema.mul_(cfg.frqud_momentum).add_((1 - cfg.frqud_momentum) * freq)
        self.usage_steps.add_(1)

    def _codes(self, x: Tensor) -> Tensor:
        """Noise-free codes ``(B, L)``: per level the Sinkhorn-balanced codes over ``x`` (``sk_epsilon > 0``, as the
        reference's ``get_indices``) or the nearest codeword. Fewer rows than codes cannot be balanced over the
        codebook (one row alone would take code 0): they get the nearest codeword (ours; the reference only
        encodes its whole catalogue)."""
        cfg = self.config
        if cfg.sk_epsilon == 0 or x.shape[0] < cfg.codebook_size:
            return super()._codes(x)
        residual = self.encoder(self.standardize(x))  # (B, d)
        codes = []
        for level in range(cfg.num_levels):
            code = sinkhorn_codes(self.quantizer.distances(residual, level), cfg.sk_epsilon, cfg.sk_iters)  # (B,)
            codes.append(code)
            residual = residual - self.quantizer.codebooks[level][code]
        return torch.stack(codes, dim=1)

    @torch.no_grad()
    def encode(self, emb: Tensor, batch_size: int = 4096) -> Tensor:
        """The code table ``(N, L)``: with ``sk_epsilon > 0`` balanced over the whole catalogue at once, as the
        reference's ``get_code`` (``batch_size`` is then unused; the Sinkhorn plan is N x K in float64)."""
        if self.config.sk_epsilon == 0:
            return super().encode(emb, batch_size)
        was_training = self.training
        self.eval()
        try:
            return self._codes(emb.to(self.device, torch.float32)).to(emb.device)
        finally:
            self.train(was_training)

    def assign(self, x: Tensor, items: Tensor | None = None, generator: torch.Generator | None = None) -> Assignment:
        """Quantize a batch ``x (B, D)`` for joint training.

        Training mode with ``gumbel``: per level, Gumbel-perturbed softmax over the logits (minus the centred
        distances with ``sk_epsilon > 0``, else minus the squared distances), straight-through indicator, quantized
        vector ``Ind . E_l``, next residual from it. Otherwise (eval mode, or the naive baseline)
        ``RQVAE.assign``: argmin codes, constant one-hot, quantized ``z + sg(z_hat - z)``.

        Args:
            x: item embeddings ``(B, D)`` on the tokenizer's device.
            items: the catalogue rows of ``x`` (unused; the common ``assign`` contract).
            generator: source of the Gumbel noise; default torch's RNG of the tokenizer's device, which the
                training loop seeds and saves in its checkpoints (so a resumed run draws the same noise).

        Returns:
            ``Assignment``; ``loss`` is the reference's joint tokenizer loss (``terms``: ``recon`` = the latent
            reconstruction ``mse(z_hat, z)``, ``rq`` the codebook and commitment terms of ``Ind . E``) plus the
            weighted ``balance`` loss. ``reconstruction`` is the decoder's ``x_hat`` of ``z_hat`` (for PSA; no
            loss reads it here).
        """
        cfg = self.config
        if not (self.training and cfg.gumbel):
            return super().assign(x, items, generator)
        # float32 even under the recommender's bf16 autocast (the tokenizer is small): bf16 latents and distances
        # flip near-ties, so noise-free samples would get codes other than encode()'s.
        with torch.autocast(x.device.type, enabled=False):
            xs = self.standardize(x.float())
            z = self.encoder(xs)  # (B, d)
            codes, onehot, logits, z_hat, terms = self._gumbel_levels(z, generator)
            # The reference has no decoder in joint training: its reconstruction loss is in the latent space.
            terms = {"recon": F.mse_loss(z_hat, z), **terms}
            x_hat = self.decoder(z_hat)  # (B, D)
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
        noisy: Tensor | None = None  # (B,) FrqUD: the samples that take the noisy code
        for level in range(cfg.num_levels):
            d = squared_distances(residual, codebooks[level])  # (B, K)
            if cfg.sk_epsilon > 0:
                # The reference's center_distance_for_constraint: the batch's distances mapped onto [-1, 1] (with
                # gradient), the Sinkhorn plan's input and the logits the Gumbel noise is added to.
                mid, amplitude = (d.max() + d.min()) / 2, (d.max() - d.min()) / 2 + 1e-5
                logits = -(d - mid) / amplitude
                quiet = sinkhorn_codes(d.detach(), cfg.sk_epsilon, cfg.sk_iters)  # (B,) noise-free codes
            else:
                logits = -d
                quiet = logits.detach().argmax(dim=1)
            if cfg.decay == "frqud" and level == 0:
                noisy = self.hot(logits.detach().argmax(dim=1))  # read before this batch updates the EMA
                self.update_usage(quiet)
                scale = cfg.noise_scale * noisy.to(logits.dtype)[:, None]  # (B, 1), kept for every level
            elif cfg.decay == "sdud":
                scale = self.sigma[level].abs()
            level_scale = scale
            if cfg.noise_gap_scaled:
                nearest = (-logits.detach()).topk(2, dim=1, largest=False).values  # (B, 2) two smallest distances
                level_scale = scale * (nearest[:, 1] - nearest[:, 0]).mean()
            noise = gumbel_noise(tuple(logits.shape), logits.device, generator)  # (B, K)
            y_soft = F.softmax((logits + level_scale * noise) / cfg.gumbel_tau, dim=1)  # (B, K)
            code = y_soft.argmax(dim=1)  # (B,)
            if noisy is not None:  # FrqUD: cold samples keep their noise-free code
                code = torch.where(noisy, code, quiet)
            changed.append((code != quiet).float().mean())  # vs this level's noise-free code
            onehot = F.one_hot(code, cfg.codebook_size).to(y_soft.dtype) - y_soft.detach() + y_soft
            chosen = onehot @ codebooks[level]  # (B, d): the hard codeword, with gradient to all of them
            # The reference's VQ loss reads Ind . E too, so its codebook term also reaches every codeword.
            rq.append(self.quantizer.level_loss(residual, chosen))
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
            ``"noise.changed"``: per level, the share of codes the Gumbel noise changed (vs that level's noise-free
            code on the same residual), averaged over the training-mode ``assign`` calls since the last call (then reset).
            SDUD adds ``"noise.sigma"``: ``|sigma_l|`` per level. FrqUD adds ``"noise.hot_codes"`` (share of
            level-1 codes that are hot) and ``"noise.perturbed"`` (EMA share of samples whose code is hot, i.e.
            perturbed); ``{}`` before any noisy assignment.

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
        """SDUD: ``L / (2 s^2) + log s`` with ``s = |mean_l sigma_l| + lambda`` (the reference's mean sigma);
        unchanged otherwise.

        It is minimal at ``s = sqrt(L)``, so the noise scale follows the task loss and decays as the recommender
        converges.

        Example:
            >>> cfg = DIGERConfig(codebook_size=8, latent_dim=4, hidden_dims=[16], decay="sdud")  # sigma 1, lambda 1.7
            >>> round(DIGER(cfg, input_dim=16).wrap_task_loss(torch.tensor(4.0)).item(), 4)  # 4 / (2 2.7^2) + log 2.7
            1.2676
        """
        if self.config.decay != "sdud":
            return task_loss
        s = self.sigma.mean().abs() + self.config.sdud_lambda
        return task_loss / (2 * s.pow(2)) + s.log()

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
