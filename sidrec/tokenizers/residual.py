"""Residual vector quantiser: L codebooks, each quantising what the previous levels left over (METHODS 1.1).

Notation: r_0 = z, c_l = argmin_k ||r_l - e^l_k||, r_{l+1} = r_l - e^l_{c_l}, z_hat = sum_l e^l_{c_l}.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sidrec.tokenizers.base import QuantizerOutput
from sidrec.tokenizers.kmeans import balanced_kmeans, kmeans, nearest, squared_distances


@torch.no_grad()
def sinkhorn_codes(distances: Tensor, epsilon: float, iters: int) -> Tensor:
    """Balanced codes of a batch: argmax per row of the Sinkhorn-Knopp plan over squared distances ``(B, K)``.

    As LETTER's ``sinkhorn_algorithm`` and ``center_distance_for_constraint`` (``RQ-VAE/models/layers.py``,
    ``vq.py``): the distances are mapped affinely onto [-1, 1], the kernel ``exp(-d / epsilon)`` is normalised
    alternately over rows (each item one unit of mass) and columns (each code an equal share), ending on the
    columns, and each item takes its most probable code. Computed in log space in float64 (LETTER exponentiates in
    float64, which overflows for epsilon below ~0.0014); normalising constants do not change the argmax.

    Args:
        distances: ``(B, K)`` squared distances of a batch's residuals to one level's codewords.
        epsilon: entropic regularisation on the [-1, 1] scale (LETTER: 0.003 on its last level).
        iters: Sinkhorn iterations (LETTER: 50).

    Returns:
        ``(B,)`` long codes, spread over the codes far more evenly than the argmin (at small epsilon 50
        iterations balance only roughly); the items that move are those the move costs least.

    Example:
        >>> d = torch.tensor([[0.0, 1.0], [0.0, 1.2], [0.0, 3.0], [0.0, 4.0]])  # argmin: code 0 for all
        >>> sinkhorn_codes(d, 0.003, 50).tolist()
        [1, 1, 0, 0]
    """
    d = distances.double()
    lo, hi = d.min(), d.max()
    amplitude = (hi - lo) / 2 + 1e-5  # LETTER's centring: (d - middle) / amplitude lies in [-1, 1]
    log_q = -(d - (hi + lo) / 2) / amplitude / epsilon  # (B, K)
    for _ in range(iters):
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True)  # each item's row sums to one
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True)  # each code's column gets the same mass
    return log_q.argmax(dim=1)


class ResidualQuantizer(nn.Module):
    """L levels of K codewords of dimension d, stored as one parameter ``codebooks (L, K, d)``.

    Besides ``forward``, it exposes the pieces later methods build on: per-level ``distances``, the
    ``residuals`` entering each level, and ``lookup`` of codewords with gradients to the codebooks.

    Args:
        num_levels: L.
        codebook_size: K.
        dim: d, the latent dimension.
        beta: weight of the commitment term.
        reduction: ``"sum"``: squared norms summed over the d dimensions and the terms summed over levels
            (METHODS 1.1); ``"mean"``: ``F.mse_loss`` means over d, averaged over levels (LETTER's and ETEGRec's
            ``rq.py`` / ``vq.py``), the scale their weights for added terms assume.

    Example:
        >>> rq = ResidualQuantizer(num_levels=3, codebook_size=256, dim=32)
        >>> out = rq(torch.randn(8, 32))
        >>> out.codes.shape, out.quantized.shape
        (torch.Size([8, 3]), torch.Size([8, 32]))
    """

    def __init__(
        self, num_levels: int, codebook_size: int, dim: int, beta: float = 0.25, reduction: str = "sum"
    ) -> None:
        super().__init__()
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction: must be 'sum' or 'mean', got {reduction!r}")
        self.reduction = reduction
        self.num_levels = num_levels
        self.codebook_size = codebook_size
        self.dim = dim
        self.beta = beta
        self.codebooks = nn.Parameter(torch.empty(num_levels, codebook_size, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The VQ-VAE initialisation, used when k-means initialisation is switched off.
        nn.init.uniform_(self.codebooks, -1.0 / self.codebook_size, 1.0 / self.codebook_size)

    @torch.no_grad()
    def init_kmeans(self, z: Tensor, iters: int, generator: torch.Generator, balanced: bool = False) -> None:
        """Set each level's codebook to the k-means centroids of the residuals entering that level.

        Args:
            z: latents of an initialisation batch, ``(B, d)``.
            iters: Lloyd iterations per level.
            generator: CPU generator for the k-means seeding.
            balanced: size-balanced k-means (``balanced_kmeans``, LETTER's constrained k-means), and the next
                level's residual subtracts each latent's nearest codeword, as LETTER's ``vq_init`` does, rather
                than its balanced cluster's centre.
        """
        residual = z.detach()
        for level in range(self.num_levels):
            if balanced:
                centroids, _ = balanced_kmeans(residual, self.codebook_size, iters, generator)
                assign = nearest(residual, centroids)[0]
            else:
                centroids, assign = kmeans(residual, self.codebook_size, iters, generator)
            self.codebooks[level].copy_(centroids)
            residual = residual - centroids[assign]

    def distances(self, residual: Tensor, level: int) -> Tensor:
        """Squared distances from residuals ``(B, d)`` to every codeword of ``level``: ``(B, K)``."""
        return squared_distances(residual, self.codebooks[level])

    def encode(self, z: Tensor) -> Tensor:
        """Hard codes by greedy nearest codeword, level by level: ``(B, d) -> (B, L)`` long."""
        codes = []
        residual = z
        for level in range(self.num_levels):
            code = self.distances(residual, level).argmin(dim=1)  # (B,)
            codes.append(code)
            residual = residual - self.codebooks[level][code]
        return torch.stack(codes, dim=1)

    def residuals(self, z: Tensor, codes: Tensor | None = None) -> Tensor:
        """The residual entering each level, r_0 .. r_{L-1}: ``(B, L, d)``.

        Args:
            z: latents ``(B, d)``.
            codes: hard codes ``(B, L)`` to follow; ``None`` uses the greedy nearest codes of ``z``.

        Gradients flow to ``z`` and to the codewords of earlier levels (r_l = z - sum_{j<l} e^j_{c_j}).
        """
        codes = self.encode(z.detach()) if codes is None else codes
        out = []
        residual = z
        for level in range(self.num_levels):
            out.append(residual)
            residual = residual - self.codebooks[level][codes[:, level]]
        return torch.stack(out, dim=1)

    def logits(self, z: Tensor, codes: Tensor | None = None) -> Tensor:
        """Minus the squared distance of each level's residual to every codeword: ``(B, d) -> (B, L, K)``.

        ``softmax(logits[:, l] / tau)`` is the code distribution of level l (ETEGRec's P(k | v_l) at tau = 1).
        Residuals follow ``codes`` (default: the greedy nearest codes of ``z``); gradients reach ``z`` and every
        codeword.

        Example:
            >>> rq = ResidualQuantizer(num_levels=3, codebook_size=256, dim=32)
            >>> rq.logits(torch.randn(8, rq.dim)).shape
            torch.Size([8, 3, 256])
        """
        residuals = self.residuals(z, codes)  # (B, L, d)
        return torch.stack([-self.distances(residuals[:, level], level) for level in range(self.num_levels)], 1)

    def straight_through_distances(self, z: Tensor) -> Tensor:
        """ETEGRec's per-level code scores as its ``vq.py`` computes them: ``(B, d) -> (B, L, K)`` squared distances.

        Each level's residual follows the level's own nearest code, and after level 0 it carries no gradient: ETEGRec
        subtracts the straight-through quantisation ``r + sg(e - r)`` from r, leaving ``sg(r - e)``. So the scores
        reach z through level 0 only, and each codebook through its own level. ETEGRec's L_SIA takes
        ``softmax(+distance)`` as the code distribution (its ``logit = d``; the paper writes -distance).

        Example:
            >>> rq = ResidualQuantizer(num_levels=3, codebook_size=8, dim=4)
            >>> rq.straight_through_distances(torch.randn(5, 4)).shape
            torch.Size([5, 3, 8])
        """
        out = []
        residual = z
        for level in range(self.num_levels):
            distances = self.distances(residual, level)  # (B, K), gradients to the residual and this codebook
            out.append(distances)
            residual = (residual - self.codebooks[level][distances.argmin(dim=1)]).detach()
        return torch.stack(out, 1)

    def soft_logits(self, z: Tensor, tau: float = 1.0) -> Tensor:
        """Like ``logits`` but each residual subtracts the expected codeword of the level before: ``(B, L, K)``.

        r_{l+1} = r_l - sum_k softmax(-||r_l - e^l_k||^2 / tau)_k e^l_k, so every codeword of every level shapes the
        later levels' distributions (SODA's soft-residual option, our formulation).
        """
        out = []
        residual = z
        for level in range(self.num_levels):
            logits = -self.distances(residual, level)  # (B, K)
            out.append(logits)
            residual = residual - (logits / tau).softmax(-1) @ self.codebooks[level]
        return torch.stack(out, 1)

    def level_loss(self, residual: Tensor, chosen: Tensor) -> Tensor:
        """One level's ``||sg[r] - e||^2 + beta * ||r - sg[e]||^2`` for residuals and chosen codewords ``(B, d)``.

        Averaged over the batch; over d summed (``reduction="sum"``) or averaged (``"mean"``). ``combine_levels``
        then sums or averages the levels.
        """
        codebook_term = (residual.detach() - chosen).pow(2)  # (B, d)
        commitment_term = (residual - chosen.detach()).pow(2)  # (B, d)
        per_item = codebook_term + self.beta * commitment_term
        return per_item.mean() if self.reduction == "mean" else per_item.sum(-1).mean()

    def combine_levels(self, per_level: list[Tensor]) -> Tensor:
        """Sum (``"sum"``) or mean (``"mean"``, LETTER's/ETEGRec's ``torch.stack(all_losses).mean()``) of levels."""
        total = torch.stack(per_level).sum()
        return total / len(per_level) if self.reduction == "mean" else total

    def lookup(self, codes: Tensor) -> Tensor:
        """z_hat = sum of the chosen codewords, ``(B, L) -> (B, d)``, with gradients to the codebooks."""
        levels = torch.arange(self.num_levels, device=codes.device)
        return self.codebooks[levels, codes].sum(dim=1)  # (B, L, d) summed over levels

    def forward(self, z: Tensor, sk_epsilons: Sequence[float] | None = None, sk_iters: int = 50) -> QuantizerOutput:
        """Quantize latents ``z (B, d)``.

        Args:
            z: latents ``(B, d)``.
            sk_epsilons: per level, 0 for the nearest codeword or the epsilon of a Sinkhorn-balanced assignment
                over the batch (``sinkhorn_codes``; LETTER trains with ``[0, 0, 0, 0.003]``); None: nearest.
            sk_iters: Sinkhorn iterations.

        Returns:
            ``QuantizerOutput(quantized, codes, loss)``: ``quantized = z + sg(z_hat - z)`` (straight-through:
            its value is z_hat, its gradient goes to z); ``loss`` = the levels' ``||sg[r_l] - e^l_{c_l}||^2 +
            beta * ||r_l - sg[e^l_{c_l}]||^2``, averaged over the batch and reduced per ``reduction``.
        """
        residual = z
        codes, losses = [], []
        for level in range(self.num_levels):
            distances = self.distances(residual.detach(), level)  # (B, K)
            epsilon = sk_epsilons[level] if sk_epsilons is not None else 0.0
            code = sinkhorn_codes(distances, epsilon, sk_iters) if epsilon > 0 else distances.argmin(dim=1)  # (B,)
            chosen = self.codebooks[level][code]  # (B, d)
            losses.append(self.level_loss(residual, chosen))
            codes.append(code)
            residual = residual - chosen
        z_hat = z - residual  # = sum of chosen codewords
        return QuantizerOutput(
            quantized=z + (z_hat - z).detach(), codes=torch.stack(codes, dim=1), loss=self.combine_levels(losses)
        )
