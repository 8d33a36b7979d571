"""RQ-KMeans tokenizer (METHODS 1.2): k-means on the embeddings, subtract the centroid, repeat per level."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from sidrec.tokenizers.base import QuantizerOutput, Tokenizer, codebook_health, require
from sidrec.tokenizers.kmeans import INIT_SAMPLE, balanced_kmeans, kmeans, nearest
from sidrec.utils import resolve_device

# Rows per in-place update of the fit residual.
_BLOCK = 65536


def _blocks(n: int) -> Iterator[slice]:
    """Consecutive row slices of at most ``_BLOCK`` rows covering ``range(n)``."""
    return (slice(start, start + _BLOCK) for start in range(0, n, _BLOCK))


@dataclass
class RQKMeansConfig:
    """RQ-KMeans hyper-parameters.

    Args:
        num_levels: L, code levels.
        codebook_size: K, clusters per level.
        iters: Lloyd iterations per level.
        balanced: use size-balanced k-means (clusters of N // K or N // K + 1 items) at every level.
        standardize: standardise each input dimension with the fit data's mean and std.
        init_sample: k-means++ seeds each level on a seeded random subset of at most this many items (the
            Lloyd iterations use all of them); catalogues up to this size seed on every item. ``None``: always
            all items (k sequential passes over N items per level, slow at 1M items).

    Example:
        >>> cfg = RQKMeansConfig(codebook_size=128, balanced=True)
        >>> cfg.num_levels, cfg.codebook_size
        (3, 128)
    """

    num_levels: int = 3
    codebook_size: int = 256
    iters: int = 50
    balanced: bool = False
    standardize: bool = False
    init_sample: int | None = INIT_SAMPLE

    def __post_init__(self) -> None:
        for name in ("num_levels", "codebook_size"):
            require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        require(self.iters >= 0, "iters", f"must be >= 0, got {self.iters}")
        require(
            self.init_sample is None or self.init_sample >= self.codebook_size,
            "init_sample",
            f"must be >= codebook_size ({self.codebook_size}) or null, got {self.init_sample}",
        )


class RQKMeans(Tokenizer):
    """Residual k-means: level l clusters the residuals left by levels 0..l-1.

    ``encode`` always takes the nearest centroid level by level, so an item's codes depend only on its
    embedding; with ``balanced=True`` the balancing shapes the centroids, and the encoded codes of the fit items
    are close to, not exactly, balanced.

    Args:
        config: an ``RQKMeansConfig``.
        input_dim: D, the embedding dimension.

    Example:
        >>> x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))  # 64 items, D = 16
        >>> tok = RQKMeans(RQKMeansConfig(codebook_size=8), input_dim=16).fit(x, seed=0, device="cpu", progress=False)
        >>> tok.semantic_ids(x).shape  # (N, 4): 3 codes + dedup token
        torch.Size([64, 4])
    """

    name = "rqkmeans"

    def __init__(self, config: RQKMeansConfig, input_dim: int) -> None:
        super().__init__(config, input_dim)
        self.register_buffer("centroids", torch.zeros(config.num_levels, config.codebook_size, input_dim))

    def forward(self, x: Tensor) -> QuantizerOutput:
        """Returns ``QuantizerOutput(quantized (B, D), codes (B, L), loss, reconstruction (B, D))``.

        ``quantized`` = ``reconstruction`` = sum of the chosen centroids in the standardised input space;
        ``loss`` is the squared final residual, summed over dimensions and averaged over the batch.
        """
        xs = self.standardize(x)
        residual = xs
        codes = []
        for level in range(self.num_levels):
            code, _ = nearest(residual, self.centroids[level])  # (B,)
            codes.append(code)
            residual = residual - self.centroids[level][code]
        quantized = xs - residual
        loss = residual.pow(2).sum(-1).mean()
        return QuantizerOutput(quantized, torch.stack(codes, dim=1), loss, quantized)

    def _codes(self, x: Tensor) -> Tensor:
        return self(x).codes

    @torch.no_grad()
    def fit(
        self,
        emb: Tensor,
        *,
        seed: int,
        device: str | torch.device = "auto",
        progress: bool = True,
        log: Callable[[dict[str, Any]], None] | None = None,
        collab: Tensor | None = None,
    ) -> RQKMeans:
        """Fit the L codebooks on item embeddings ``emb (N, D)``.

        Args:
            emb: item embeddings, one row per item.
            seed: seeds the k-means initialisation.
            device: where to compute (``"auto"``: GPU if available); the model stays there.
            progress: show a progress bar over levels.
            log: called after every level with ``{"level", "loss", **codebook_health}`` on the codes so far
                (``loss``: mean squared norm of the residual left after that level).
            collab: collaborative item embeddings; RQ-KMeans does not use them (accepted for the common contract).

        Returns:
            ``self``, in eval mode.
        """
        self._check_fit_input(emb)
        cfg = self.config
        device = resolve_device(device) if isinstance(device, str) else device
        generator = torch.Generator().manual_seed(seed)
        self.to(device)
        x = emb.to(device, torch.float32)
        self._set_standardization(x, cfg.standardize)
        # One (N, D) residual, updated in place in row blocks: at 1M x 384 items every extra full-size
        # temporary (standardising, gathering centroids[code], squaring for the loss) costs 1.5 GB.
        residual = torch.empty_like(x)  # (N, D)
        for rows in _blocks(len(x)):
            residual[rows] = self.standardize(x[rows])
        cluster = balanced_kmeans if cfg.balanced else kmeans
        codes = []
        bar = tqdm(range(cfg.num_levels), desc=self.name, disable=not progress)
        for level in bar:
            centroids, _ = cluster(residual, cfg.codebook_size, cfg.iters, generator, init_sample=cfg.init_sample)
            self.centroids[level].copy_(centroids)
            # Residuals follow the nearest centroid, as encode() does, so later levels fit what encode() sees.
            code, _ = nearest(residual, centroids)
            codes.append(code)
            sq_norm = residual.new_empty(len(residual))  # (N,) squared norm of each new residual
            for rows in _blocks(len(residual)):
                residual[rows] -= centroids[code[rows]]
                sq_norm[rows] = residual[rows].pow(2).sum(-1)
            stats = {"level": level + 1, "loss": float(sq_norm.mean())}
            stats.update(codebook_health(torch.stack(codes, dim=1), cfg.codebook_size))
            bar.set_postfix(loss=f"{stats['loss']:.4f}", usage=f"{stats['usage'][-1]:.2f}")
            if log is not None:
                log(stats)
        self.fitted.fill_(True)
        return self.eval()
