"""What every tokenizer shares: the return contract, semantic-ID dedup, codebook health and save/load.

A tokenizer maps item embeddings ``(N, D)`` to ``L`` discrete codes per item. Semantic IDs add one last token so
that items sharing the same ``L`` codes stay distinguishable (METHODS 1.1, "Collisions").
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from sidrec.utils import atomic_write, atomic_write_json

WEIGHTS_FILE = "tokenizer.safetensors"
CONFIG_FILE = "tokenizer.json"
SIDS_FILE = "sids.npy"  # the (N, L + 1) SID table a run trained, validated, saved and tested with


class QuantizerOutput(NamedTuple):
    """What a quantizer's forward returns.

    Attributes:
        quantized: the quantized latent ``(B, d)``, straight-through where the quantizer is trained by gradient.
        codes: the chosen code per level ``(B, L)`` long.
        loss: scalar training loss of this module.
        reconstruction: the reconstruction ``(B, D)`` of the standardised input, where the model has a decoder.
    """

    quantized: Tensor
    codes: Tensor
    loss: Tensor
    reconstruction: Tensor | None = None


class Assignment(NamedTuple):
    """What a trainable tokenizer's ``assign`` returns: everything joint schedules and alignment losses need.

    Attributes:
        codes: the chosen code per level ``(B, L)`` long.
        onehot: ``(B, L, K)`` float, a hard one-hot of ``codes`` in the forward pass. Straight-through for
            DIGER (the gradient flows to the soft assignment); a constant (no gradient) for RQ-VAE. A recommender
            that embeds SID tokens as ``onehot @ token_rows`` lets the recommendation loss reach the tokenizer.
        logits: ``(B, L, K)`` = minus the squared distance of each level's residual to every codeword of that
            level (residuals follow the hard codes); the level's code distribution is ``softmax(logits / tau)``.
        latent: the encoder output z ``(B, d)``.
        quantized: the quantised latent ``(B, d)`` (straight-through where the tokenizer is trained by gradient).
        reconstruction: the reconstruction ``(B, D)`` of the standardised input, where the model has a decoder.
        loss: the tokenizer's own scalar training loss, its full method loss (e.g. L_SQ of RQ-VAE; LETTER adds
            alpha * L_CF and beta * L_Div, CoST has its contrastive term), the sum of ``terms``.
        terms: the weighted parts of ``loss`` by name (``recon``, ``rq``, ``cf``, ``div``, ``cl``, ...), to log and
            to compare their gradients.

    Example:
        >>> from sidrec.tokenizers import RQVAE, RQVAEConfig
        >>> tok = RQVAE(RQVAEConfig(codebook_size=8, latent_dim=4, hidden_dims=[16]), input_dim=16)
        >>> out = tok.assign(torch.randn(5, 16))
        >>> out.logits.softmax(-1).shape  # (B, L, K)
        torch.Size([5, 3, 8])
    """

    codes: Tensor
    onehot: Tensor
    logits: Tensor
    latent: Tensor
    quantized: Tensor
    reconstruction: Tensor | None
    loss: Tensor
    terms: dict[str, Tensor]


def assign_semantic_ids(codes: Tensor) -> Tensor:
    """Append the dedup token: each item's index within its group of identical code tuples.

    Items keep their order inside a group, so the first item with a tuple gets 0, the next 1, and so on. The
    result has one row per item and every row is unique.

    Args:
        codes: ``(N, L)`` long.

    Returns:
        ``(N, L + 1)`` long.

    Example:
        >>> assign_semantic_ids(torch.tensor([[1, 2], [3, 4], [1, 2]])).tolist()
        [[1, 2, 0], [3, 4, 0], [1, 2, 1]]
    """
    if codes.dim() != 2:
        raise ValueError(f"codes: expected shape (N, L), got {tuple(codes.shape)}")
    n = codes.shape[0]
    if n == 0:
        return codes.new_zeros(0, codes.shape[1] + 1)
    _, group = torch.unique(codes, dim=0, return_inverse=True)  # (N,) group id of each item
    order = torch.argsort(group, stable=True)  # groups contiguous, item order kept inside a group
    sorted_group = group[order]
    pos = torch.arange(n, device=codes.device)
    starts = torch.ones(n, dtype=torch.bool, device=codes.device)
    starts[1:] = sorted_group[1:] != sorted_group[:-1]
    group_start = torch.cummax(torch.where(starts, pos, 0), dim=0).values  # position where each group begins
    dedup = torch.empty_like(group)
    dedup[order] = pos - group_start
    return torch.cat([codes, dedup[:, None].to(codes.dtype)], dim=1)


def codebook_health(codes: Tensor, codebook_size: int | Sequence[int]) -> dict[str, Any]:
    """Usage statistics of a code matrix, to spot codebook collapse and collisions.

    Args:
        codes: ``(N, L)`` long, values in ``0..codebook_size - 1``.
        codebook_size: K, codes per level, or one size per level (imported SIDs may differ per level).

    Returns:
        A JSON-serialisable dict: per level (lists of length L) ``usage`` (fraction of the K codes used),
        ``perplexity`` (exp of the entropy of code frequencies; K when uniform, 1 when collapsed) and
        ``dead_codes`` (codes never used); over whole tuples ``unique_tuples``, ``max_group`` (largest group of
        items sharing a tuple) and ``collision_rate`` (share of items that need a non-zero dedup token).

    Example:
        >>> codebook_health(torch.tensor([[0, 1], [0, 1]]), 2)["collision_rate"]
        0.5
    """
    if codes.dim() != 2:
        raise ValueError(f"codes: expected shape (N, L), got {tuple(codes.shape)}")
    n, num_levels = codes.shape
    sizes = [codebook_size] * num_levels if isinstance(codebook_size, int) else list(codebook_size)
    if len(sizes) != num_levels:
        raise ValueError(f"codebook_size: {len(sizes)} level sizes for {num_levels} levels")
    usage, perplexity, dead = [], [], []
    for level, k in enumerate(sizes):
        column = codes[:, level]
        if n and (int(column.min()) < 0 or int(column.max()) >= k):
            low, high = int(column.min()), int(column.max())
            raise ValueError(f"codes: values must lie in 0..{k - 1}, got {low}..{high} at level {level + 1}")
        counts = torch.bincount(column, minlength=k).double()  # (K,)
        used = int((counts > 0).sum())
        p = counts[counts > 0] / max(n, 1)
        usage.append(used / k)
        perplexity.append(math.exp(float(-(p * p.log()).sum())))
        dead.append(k - used)
    if n:
        _, group_sizes = torch.unique(codes, dim=0, return_counts=True)
        unique, max_group = len(group_sizes), int(group_sizes.max())
    else:
        unique, max_group = 0, 0
    return {
        "usage": usage,
        "perplexity": perplexity,
        "dead_codes": dead,
        "unique_tuples": unique,
        "max_group": max_group,
        "collision_rate": (n - unique) / n if n else 0.0,
    }


def require(ok: bool, field: str, message: str) -> None:
    """Raise ``ValueError("<field>: <message>")`` when a config value is invalid."""
    if not ok:
        raise ValueError(f"{field}: {message}")


def row_norms(x: Tensor) -> dict[str, float]:
    """Mean, min and max of the L2 norms of the rows of ``x (N, D)``: the scale a method's weights act on.

    Example:
        >>> row_norms(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
        {'mean': 3.0, 'min': 1.0, 'max': 5.0}
    """
    norms = x.float().norm(dim=1)  # (N,)
    return {"mean": float(norms.mean()), "min": float(norms.min()), "max": float(norms.max())}


class Tokenizer(nn.Module, ABC):
    """Base class: maps item embeddings ``(N, D)`` to ``L`` codes per item from codebooks of size ``K``.

    Subclasses set ``name``, take ``(config, input_dim)`` and implement ``fit``, ``forward`` and ``_codes``.
    Input standardisation statistics live here as buffers, so they are saved with the weights.

    Example:
        >>> from sidrec.tokenizers import RQKMeans, RQKMeansConfig
        >>> tok = RQKMeans(RQKMeansConfig(num_levels=2, codebook_size=4), input_dim=8)
        >>> tok = tok.fit(torch.randn(64, 8), seed=0, device="cpu", progress=False)
        >>> tok.semantic_ids(torch.randn(5, 8)).shape
        torch.Size([5, 3])
    """

    name: ClassVar[str]
    uses_collab: ClassVar[bool] = False  # whether fit() uses its ``collab`` embeddings

    def __init__(self, config: Any, input_dim: int) -> None:
        super().__init__()
        require(
            isinstance(input_dim, int) and input_dim >= 1, "input_dim", f"must be >= 1, got {input_dim!r}"
        )
        self.config = config
        self.input_dim = input_dim
        self.register_buffer("input_mean", torch.zeros(input_dim))
        self.register_buffer("input_std", torch.ones(input_dim))
        self.register_buffer("fitted", torch.tensor(False))

    @property
    def num_levels(self) -> int:
        return self.config.num_levels

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def device(self) -> torch.device:
        return self.fitted.device

    def standardize(self, x: Tensor) -> Tensor:
        """Per-dimension standardisation with the statistics of the fit data (identity when disabled)."""
        return (x - self.input_mean) / self.input_std

    @torch.no_grad()
    def input_scale(self, x: Tensor) -> dict[str, dict[str, float]]:
        """Row norms (``row_norms``) of every input: the rows ``x (N, D)`` given to the tokenizer and the rows its
        model reads after standardisation (the same when it is off); ``health.json`` records them."""
        x = x.to(self.device, torch.float32)
        return {"input": row_norms(x), "standardized": row_norms(self.standardize(x))}

    def _set_standardization(self, x: Tensor, enabled: bool) -> None:
        if enabled:
            self.input_mean.copy_(x.mean(0))
            # Constant dimensions stay 0 after centring; the floor only avoids 0/0.
            self.input_std.copy_(x.std(0, unbiased=False).clamp_min(1e-8))
        else:
            self.input_mean.zero_()
            self.input_std.fill_(1.0)

    def _check_input(self, emb: Tensor) -> None:
        if not isinstance(emb, Tensor) or emb.dim() != 2 or emb.shape[1] != self.input_dim:
            shape = tuple(emb.shape) if isinstance(emb, Tensor) else type(emb).__name__
            raise ValueError(f"emb: expected a tensor of shape (N, {self.input_dim}), got {shape}")

    def _check_fit_input(self, emb: Tensor) -> None:
        self._check_input(emb)
        if emb.shape[0] == 0:
            raise ValueError("emb: no items to fit on")
        if not torch.isfinite(emb).all():
            raise ValueError("emb: contains NaN or infinite values")

    @abstractmethod
    def fit(
        self,
        emb: Tensor,
        *,
        seed: int,
        device: str | torch.device = "auto",
        progress: bool = True,
        log: Callable[[dict[str, Any]], None] | None = None,
        collab: Tensor | None = None,
    ) -> Tokenizer:
        """Train from scratch on ``emb (N, D)``; ``log`` receives progress dicts with loss and codebook health.

        ``collab (N, Dc)``, aligned with the rows of ``emb``, holds collaborative item embeddings for tokenizers
        whose ``uses_collab`` is true (LETTER); the others accept and ignore it.
        """

    @abstractmethod
    def forward(self, x: Tensor) -> QuantizerOutput:
        """Quantize a batch ``(B, D)``."""

    @abstractmethod
    def _codes(self, x: Tensor) -> Tensor:
        """Hard codes ``(B, L)`` of a batch already on the tokenizer's device."""

    @torch.no_grad()
    def encode(self, emb: Tensor, batch_size: int = 4096) -> Tensor:
        """Deterministic codes ``(N, L)`` long, on the device of ``emb``; computed in eval mode, in batches.

        Example:
            >>> from sidrec.tokenizers import RQKMeans, RQKMeansConfig
            >>> x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
            >>> tok = RQKMeans(RQKMeansConfig(num_levels=2, codebook_size=4), input_dim=8)
            >>> tok = tok.fit(x, seed=0, device="cpu", progress=False)
            >>> tok.encode(x[:10]).shape  # (10, tok.num_levels)
            torch.Size([10, 2])
        """
        self._check_input(emb)
        if not bool(self.fitted):
            raise RuntimeError(f"{self.name}: encode() before fit() (or load_tokenizer())")
        was_training = self.training
        self.eval()
        out = [
            self._codes(emb[i : i + batch_size].to(self.device, torch.float32)).to(emb.device)
            for i in range(0, emb.shape[0], batch_size)
        ]
        self.train(was_training)
        if not out:
            return torch.zeros(0, self.num_levels, dtype=torch.long, device=emb.device)
        return torch.cat(out)

    def semantic_ids(self, emb: Tensor, batch_size: int = 4096) -> Tensor:
        """Codes plus the dedup token: ``(N, L + 1)`` long, one unique row per item."""
        return assign_semantic_ids(self.encode(emb, batch_size))

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimiser parameter groups for training this tokenizer with a recommender: all parameters at ``lr``.

        Subclasses with parameters that need their own rate (DIGER's SDUD sigmas) override this.

        Example:
            >>> from sidrec.tokenizers import RQVAE, RQVAEConfig
            >>> tok = RQVAE(RQVAEConfig(codebook_size=8, latent_dim=4, hidden_dims=[16]), input_dim=16)
            >>> opt = torch.optim.AdamW(tok.param_groups(1e-4))
        """
        return [{"params": list(self.parameters()), "lr": lr}]

    def begin_epoch(self, generator: torch.Generator) -> None:
        """Called before every epoch that trains this tokenizer (``fit`` and joint schedules): per-epoch state
        of the loss (LETTER's codeword groups of L_Div). None here."""

    def wrap_task_loss(self, task_loss: Tensor) -> Tensor:
        """The recommendation loss as the joint objective uses it while this tokenizer trains: unchanged here.

        DIGER's SDUD overrides it to tie its noise scale to the task loss.
        """
        return task_loss

    def joint_stats(self) -> dict[str, Any]:
        """JSON-able training state to log after each epoch that trained the tokenizer (none here).

        DIGER reports its noise (SDUD sigmas, FrqUD share of perturbed samples) so its decay can be followed.
        """
        return {}

    def save(self, directory: str | Path) -> Path:
        """Write ``tokenizer.safetensors`` (state dict) and ``tokenizer.json`` (name, config, input_dim), atomically.

        Example:
            >>> import tempfile
            >>> from sidrec.tokenizers import RQKMeans, RQKMeansConfig, load_tokenizer
            >>> x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
            >>> tok = RQKMeans(RQKMeansConfig(num_levels=2, codebook_size=4), input_dim=8)
            >>> tok = tok.fit(x, seed=0, device="cpu", progress=False)
            >>> with tempfile.TemporaryDirectory() as d:
            ...     saved = tok.save(d)  # the directory
            ...     torch.equal(load_tokenizer(saved).encode(x), tok.encode(x))
            True
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(tensors, str(p)))
        meta = {"name": self.name, "config": dataclasses.asdict(self.config), "input_dim": self.input_dim}
        atomic_write_json(directory / CONFIG_FILE, meta)
        return directory
