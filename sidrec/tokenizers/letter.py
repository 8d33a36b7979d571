"""LETTER tokenizer (METHODS 2): an RQ-VAE with collaborative and diversity regularisation, collisions repaired.

L_LETTER = L_Sem + alpha * L_CF + div_weight * L_Div, where
- L_Sem is the RQ-VAE loss of METHODS 1.1 with LETTER's reductions (``reduction="mean"``: ``F.mse_loss`` means,
  levels averaged, as LETTER's ``rqvae.py`` / ``rq.py``), the scale its alpha and beta were tuned on;
- L_CF is an in-batch InfoNCE between the quantised latent z_hat and frozen collaborative item embeddings H:
  cross-entropy over the raw dot products ``z_hat . H^T`` (B, B) with the diagonal as targets;
- L_Div, per level: that level's codewords are clustered into ``div_clusters`` groups by balanced k-means at the
  start of every epoch; an item with code c draws a positive c+ != c from c's group, and the loss is the
  cross-entropy of ``e_c . E^T`` (own code masked out) with target c+; averaged over levels with
  ``reduction="mean"`` (LETTER adds it to each level's loss, and ``rq.py`` averages the levels).

As in LETTER's code, the training forward takes the last level's codes from a Sinkhorn-balanced assignment over
the batch (``train_sk_epsilon``), and the codebooks start from balanced k-means on the whole catalogue.

The whole loss is in ``assign`` (``Assignment.terms``: ``recon``, ``rq``, ``cf``, ``div``), which ``fit`` and the
tokenizer phases of joint schedules both use; the regularisers need the training state (collaborative rows from
``attach_collab``, codeword groups from ``begin_epoch``) and are computed in training mode only.

After fitting, ``semantic_ids`` repairs collisions: the items of every colliding group are re-assigned on the last
level, among the codes left free for their prefix, by a Sinkhorn-balanced assignment; the dedup token of
``assign_semantic_ids`` then only separates what the last level could not (a prefix with more than K items).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from sidrec.tokenizers.base import QuantizerOutput, assign_semantic_ids, require, row_norms
from sidrec.tokenizers.kmeans import balanced_kmeans
from sidrec.tokenizers.rqvae import RQVAE, RQVAEConfig
from sidrec.utils import resolve_device


@dataclass
class LetterConfig(RQVAEConfig):
    """LETTER hyper-parameters: those of ``RQVAEConfig`` (4 levels by default) plus the regularisers.

    The paper's alpha and beta are ``alpha`` and ``div_weight`` here: ``beta`` stays the commitment weight of
    the RQ-VAE, as in ``RQVAEConfig``. The collaborative embeddings given to ``fit`` must have ``latent_dim``
    columns (LETTER: 32-d SASRec embeddings and a 32-d latent); we require equality rather than project, so
    that the raw dot product is the one of the paper.

    Args:
        alpha: weight of L_CF (paper: 0.01..0.1, best 0.02 on Instruments). With 0, ``fit`` needs no
            collaborative embeddings.
        div_weight: weight of L_Div (the paper's beta, 1e-4).
        div_clusters: groups the codewords of each level are clustered into for L_Div (paper: 10). Each group
            must hold at least 2 codes, so ``2 * div_clusters <= codebook_size``.
        div_kmeans_iters: Lloyd iterations of that balanced k-means.
        train_sk_epsilon: in training (``fit`` and joint tokenizer phases), the last level's codes come from a
            Sinkhorn-balanced assignment over the batch with this epsilon (``sinkhorn_codes``), the other levels'
            from the nearest codeword; 0: nearest everywhere. ``encode`` and ``semantic_ids`` always take the
            nearest codeword.
        train_sk_iters: Sinkhorn iterations of that assignment.
        balanced_init: initialise the codebooks by balanced k-means on the latents of the whole catalogue
            (``kmeans_init`` must be on); else RQ-VAE's plain k-means on one batch.
        repair_collisions: re-assign colliding items on the last level in ``semantic_ids``.
        sinkhorn_epsilon: entropic regularisation of the repair's Sinkhorn, relative to the largest squared
            distance among the re-assigned items (ours; smaller follows the distances more closely).
        sinkhorn_iters: Sinkhorn iterations of the repair.

    Example:
        >>> cfg = LetterConfig(alpha=0.02, div_weight=1e-4, epochs=300)
        >>> cfg.num_levels, cfg.reduction, cfg.standardize
        (4, 'mean', False)
    """

    num_levels: int = 4
    # LETTER's RQ-VAE/datasets.py feeds its text embeddings as they are, not standardised
    standardize: bool = False
    # LETTER's code: F.mse_loss means and levels averaged; alpha 0.02 and beta 1e-4 are weights on that scale.
    reduction: Literal["sum", "mean"] = "mean"
    alpha: float = 0.02
    div_weight: float = 1e-4
    div_clusters: int = 10
    div_kmeans_iters: int = 20
    # LETTER's main.py: sk_epsilons [0.0, 0.0, 0.0, 0.003] and sk_iters 50, used in the training forward only
    # (get_indices passes use_sk=False).
    train_sk_epsilon: float = 0.003
    train_sk_iters: int = 50
    # LETTER's trainer.vq_init: one batch holding every item; vq.init_emb: constrained k-means per level.
    balanced_init: bool = True
    repair_collisions: bool = True
    sinkhorn_epsilon: float = 0.01
    sinkhorn_iters: int = 50

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.alpha >= 0, "alpha", f"must be >= 0, got {self.alpha}")
        require(self.div_weight >= 0, "div_weight", f"must be >= 0, got {self.div_weight}")
        require(self.div_clusters >= 1, "div_clusters", f"must be >= 1, got {self.div_clusters}")
        require(
            2 * self.div_clusters <= self.codebook_size,
            "div_clusters",
            f"{self.div_clusters} groups of a codebook of {self.codebook_size} codes leave a group without a "
            f"positive code; use at most codebook_size // 2 = {self.codebook_size // 2}",
        )
        require(self.div_kmeans_iters >= 0, "div_kmeans_iters", f"must be >= 0, got {self.div_kmeans_iters}")
        require(self.train_sk_epsilon >= 0, "train_sk_epsilon", f"must be >= 0, got {self.train_sk_epsilon}")
        require(self.train_sk_iters >= 1, "train_sk_iters", f"must be >= 1, got {self.train_sk_iters}")
        require(self.sinkhorn_epsilon > 0, "sinkhorn_epsilon", f"must be > 0, got {self.sinkhorn_epsilon}")
        require(self.sinkhorn_iters >= 1, "sinkhorn_iters", f"must be >= 1, got {self.sinkhorn_iters}")


def cf_loss(z_hat: Tensor, collab: Tensor) -> Tensor:
    """In-batch InfoNCE of quantised latents against collaborative embeddings (raw dot product, as LETTER's code).

    Args:
        z_hat: quantised latents ``(B, d)``.
        collab: the same items' collaborative embeddings ``(B, d)``.

    Returns:
        Scalar: cross-entropy of ``z_hat @ collab.T`` (B, B) with target i for row i.

    Example:
        >>> h = torch.eye(3)
        >>> bool(cf_loss(5 * h, h) < cf_loss(5 * h[[1, 2, 0]], h))
        True
    """
    logits = z_hat @ collab.T  # (B, B)
    return F.cross_entropy(logits, torch.arange(len(z_hat), device=z_hat.device))


def sample_positive_codes(codes: Tensor, groups: Tensor, generator: torch.Generator | None) -> Tensor:
    """For each code c, a code drawn uniformly from c's group other than c itself.

    Args:
        codes: ``(B,)`` long, codes of one level.
        groups: ``(K,)`` long, the group of every code of that level; every used group holds >= 2 codes.
        generator: CPU generator for the draw (None: torch's CPU RNG).

    Returns:
        ``(B,)`` long: positives, never equal to ``codes``, always in the same group.

    Example:
        >>> g = torch.tensor([0, 0, 1, 1])
        >>> sample_positive_codes(torch.tensor([0, 3]), g, torch.Generator().manual_seed(0)).tolist()
        [1, 2]
    """
    k = groups.shape[0]
    order = torch.argsort(groups, stable=True)  # (K,) codes listed group by group
    sizes = torch.bincount(groups, minlength=k)  # (G,)
    starts = sizes.cumsum(0) - sizes  # (G,) where each group's block begins in ``order``
    rank = torch.empty_like(order)
    rank[order] = torch.arange(k, device=groups.device)  # position of each code in ``order``
    g = groups[codes]  # (B,)
    size, own = sizes[g], rank[codes] - starts[g]  # group size and the code's place in its group
    if bool((size < 2).any()):
        raise ValueError("groups: a code's group has no other code to draw a positive from")
    u = torch.rand(codes.shape[0], generator=generator).to(codes.device)
    pick = (u * (size - 1)).long().clamp_max(size - 2)  # uniform over the size - 1 other places
    pick = pick + (pick >= own).long()  # skip the code's own place
    return order[starts[g] + pick]


def diversity_loss(query: Tensor, codebook: Tensor, codes: Tensor, positives: Tensor) -> Tensor:
    """Cross-entropy over one level's codewords of ``query . E^T`` with the own code masked, target the positive.

    Args:
        query: ``(B, d)``, here the chosen codewords e_c (as LETTER's released code).
        codebook: that level's codewords ``(K, d)``.
        codes: the items' codes ``(B,)``, masked out of the logits.
        positives: target codes ``(B,)``, different from ``codes``.
    """
    logits = query @ codebook.T  # (B, K)
    logits = logits.masked_fill(F.one_hot(codes, codebook.shape[0]).bool(), float("-inf"))
    return F.cross_entropy(logits, positives)


def colliding_items(codes: Tensor) -> Tensor:
    """Indices of the items whose code tuple is shared with at least one other item: ``(M,)`` long, sorted."""
    _, inverse, counts = torch.unique(codes, dim=0, return_inverse=True, return_counts=True)
    return (counts[inverse] > 1).nonzero().flatten()


def _log_sinkhorn(log_k: Tensor, group: Tensor, row_mass: Tensor, col_mass: Tensor, iters: int) -> Tensor:
    """Entropic transport plan, in log space, of movers ``(M,)`` onto the codes of their own prefix group.

    ``log_k (M, K)`` is ``-cost / epsilon`` with ``-inf`` where a code is not free; mover m must send
    ``row_mass[m]`` and each free (group, code) slot receives ``col_mass[group]``. Columns are normalised per
    group with a scatter over ``group (M,)``, so all groups are solved at once.
    """
    log_p = log_k
    n_groups = int(group.max()) + 1
    for _ in range(iters):
        log_p = log_p - torch.logsumexp(log_p, dim=1, keepdim=True) + row_mass.log()[:, None]
        col = torch.full((n_groups, log_p.shape[1]), float("-inf"), device=log_p.device, dtype=log_p.dtype)
        col = col.scatter_reduce(0, group[:, None].expand_as(log_p), log_p, "amax")  # (G, K) stabiliser
        safe = torch.where(torch.isfinite(col), col, torch.zeros_like(col))
        sums = torch.zeros_like(col).index_add_(0, group, (log_p - safe[group]).exp())  # (G, K)
        log_col = safe + sums.log()  # (G, K) log of each slot's received mass; -inf for slots never free
        fix = torch.where(torch.isfinite(log_col), col_mass.log()[:, None] - log_col, torch.zeros_like(log_col))
        log_p = log_p + fix[group]
    return log_p


def repair_collisions(codes: Tensor, movers: Tensor, cost: Tensor, epsilon: float, iters: int) -> Tensor:
    """Re-assign colliding items on the last level with a Sinkhorn-balanced assignment to free codes.

    Every mover keeps its prefix (the first L - 1 codes) and gets a last-level code not used by any non-moving
    item of that prefix, nor by another mover. The soft plan is Sinkhorn's (rows: each mover's unit of mass,
    shrunk when its prefix has fewer free codes than movers; columns: the free codes of the prefix share the
    movers' mass evenly), rounded by rounds of proposals: each unplaced mover proposes to its most probable
    still-free code, each code takes its most probable proposer. Movers left without a free code (more items
    than codes under one prefix) keep their code; the dedup token separates them.

    Args:
        codes: ``(N, L)`` long, the greedy codes.
        movers: ``(M,)`` long, items to re-assign (``colliding_items(codes)``).
        cost: ``(M, K)`` squared distances of the movers' last-level residuals to the last-level codewords.
        epsilon: entropic regularisation, relative to the largest cost.
        iters: Sinkhorn iterations.

    Returns:
        New codes ``(N, L)``; only the last column of the movers' rows changes.

    Example:
        >>> codes = torch.tensor([[0, 1], [0, 1], [1, 0]])
        >>> repair_collisions(codes, torch.tensor([0, 1]), torch.rand(2, 2), 0.01, 50)[:, 0].tolist()
        [0, 0, 1]
    """
    out = codes.clone()
    m, k = cost.shape
    if m == 0:
        return out
    device = codes.device
    # Prefix groups of the movers, and the last-level codes that non-movers already hold under those prefixes.
    if codes.shape[1] > 1:
        _, inverse = torch.unique(codes[:, :-1], dim=0, return_inverse=True)  # (N,) prefix id of each item
    else:  # one level: every item shares the empty prefix
        inverse = torch.zeros(codes.shape[0], dtype=torch.long, device=device)
    groups, group = torch.unique(inverse[movers], return_inverse=True)  # G prefixes with movers; group (M,)
    group_of = torch.full((int(inverse.max()) + 1,), -1, dtype=torch.long, device=device)  # prefix -> group
    group_of[groups] = torch.arange(len(groups), device=device)
    stay = torch.ones(codes.shape[0], dtype=torch.bool, device=device)
    stay[movers] = False
    stay &= group_of[inverse] >= 0  # non-movers sharing a prefix with a mover
    free = torch.ones(len(groups), k, dtype=torch.bool, device=device)  # (G, K)
    free[group_of[inverse[stay]], codes[stay, -1]] = False
    n_movers = torch.bincount(group, minlength=len(groups)).to(cost.dtype)  # (G,)
    n_free = free.sum(1).to(cost.dtype)  # (G,)
    mass = torch.minimum(n_movers, n_free)  # (G,) what can be placed
    allowed = free[group]  # (M, K)
    scale = cost.max().clamp_min(1e-12)
    log_k = (-cost / (epsilon * scale)).masked_fill(~allowed, float("-inf"))
    placeable = mass[group] > 0  # (M,) movers whose prefix has any free code
    log_p = torch.full_like(log_k, float("-inf"))
    if bool(placeable.any()):
        keep = placeable.nonzero().flatten()
        _, sub = torch.unique(group[keep], return_inverse=True)
        kept_groups = torch.unique(group[keep])
        row_mass = (mass / n_movers)[group[keep]]
        col_mass = (mass / n_free.clamp_min(1))[kept_groups]
        log_p[keep] = _log_sinkhorn(log_k[keep], sub, row_mass, col_mass, iters)
    # Rounding: proposals until every mover is placed or has no free code left.
    new_last = torch.full((m,), -1, dtype=torch.long, device=device)
    room = free.clone()  # (G, K)
    rows = torch.arange(m, device=device)
    while True:
        open_rows = (new_last < 0) & placeable
        options = log_p.masked_fill(~room[group], float("-inf"))  # (M, K)
        best = options.max(dim=1)
        open_rows &= torch.isfinite(best.values)
        if not bool(open_rows.any()):
            break
        cand = rows[open_rows]
        slot = group[cand] * k + best.indices[cand]  # (C,) one slot per (prefix group, code)
        # Within each slot the most probable proposer wins; ties go to the lower item index (stable sorts).
        by_score = torch.argsort(best.values[cand], descending=True, stable=True)
        by_slot = by_score[torch.argsort(slot[by_score], stable=True)]
        first = torch.ones(len(cand), dtype=torch.bool, device=device)
        first[1:] = slot[by_slot][1:] != slot[by_slot][:-1]
        winners = cand[by_slot[first]]
        new_last[winners] = best.indices[winners]
        room[group[winners], best.indices[winners]] = False
    placed = new_last >= 0
    out[movers[placed], -1] = new_last[placed]
    return out


class Letter(RQVAE):
    """LETTER: RQ-VAE + alpha * L_CF + div_weight * L_Div; ``semantic_ids`` repairs collisions on the last level.

    ``encode`` stays the greedy per-item quantisation; the repair depends on the whole catalogue (like the dedup
    token), so it lives in ``semantic_ids``, which the pipeline calls once on all items after ``fit``.

    Args:
        config: a ``LetterConfig``.
        input_dim: D, the embedding dimension.

    Example:
        >>> x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))  # 64 items, D = 16
        >>> collab = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))  # e.g. SASRec's, latent_dim wide
        >>> cfg = LetterConfig(codebook_size=8, latent_dim=4, hidden_dims=[16], epochs=2, div_clusters=2)
        >>> tok = Letter(cfg, input_dim=16).fit(x, collab=collab, seed=0, device="cpu", progress=False)
        >>> tok.semantic_ids(x).shape  # (N, 5): 4 learned codes + dedup token
        torch.Size([64, 5])
    """

    name = "letter"
    uses_collab = True

    def __init__(self, config: LetterConfig, input_dim: int) -> None:
        super().__init__(config, input_dim)
        # (N, d) collaborative embeddings of the catalogue for L_CF, on the tokenizer's device; not saved with the
        # weights (they come from the run's cached SASRec embeddings): ``fit`` or ``attach_collab`` sets them.
        self.register_buffer("collab", None, persistent=False)
        self._div_groups: Tensor | None = None  # (L, K) group of every codeword, refreshed by begin_epoch

    def attach_collab(self, collab: Tensor | None, num_items: int) -> None:
        """Set the frozen collaborative embeddings ``collab (num_items, latent_dim)`` that L_CF reads.

        Needed before training whenever ``alpha > 0``: by ``fit`` and by joint schedules that train the tokenizer.
        Stored as given (LETTER's code uses its SASRec embeddings without normalising them).
        """
        cfg = self.config
        if cfg.alpha == 0:
            self.collab = None
            return
        if collab is None:
            raise ValueError(
                "collab: LETTER's L_CF needs collaborative item embeddings; in a run config set "
                "tokenizer.collab (e.g. {sources: [sasrec], sasrec_dim: 32}), or tokenizer.params.alpha=0"
            )
        if not isinstance(collab, Tensor) or collab.dim() != 2 or collab.shape[0] != num_items:
            shape = tuple(collab.shape) if isinstance(collab, Tensor) else type(collab).__name__
            raise ValueError(
                f"collab (tokenizer.collab): expected one row per item, shape ({num_items}, "
                f"{cfg.latent_dim}), got {shape}"
            )
        if collab.shape[1] != cfg.latent_dim:
            raise ValueError(
                f"collab (tokenizer.collab): {collab.shape[1]} columns, but L_CF compares with latents of "
                f"tokenizer.params.latent_dim = {cfg.latent_dim}; make the collaborative embedding size "
                "(e.g. tokenizer.collab.sasrec_dim) equal to latent_dim"
            )
        if not torch.isfinite(collab).all():
            raise ValueError("collab (tokenizer.collab): contains NaN or infinite values")
        self.collab = collab.to(self.device, torch.float32)

    @torch.no_grad()
    def input_scale(self, x: Tensor) -> dict[str, dict[str, float]]:
        """``Tokenizer.input_scale`` plus the row norms of the collaborative embeddings L_CF reads (when attached):
        its logits are raw dot products, so its strength grows with their norm."""
        scale = super().input_scale(x)
        if self.collab is not None:
            scale["collab"] = row_norms(self.collab)
        return scale

    def fit(
        self,
        emb: Tensor,
        *,
        seed: int,
        device: str | torch.device = "auto",
        progress: bool = True,
        log: Callable[[dict[str, Any]], None] | None = None,
        collab: Tensor | None = None,
    ) -> Letter:
        """Train from scratch on item embeddings ``emb (N, D)`` with collaborative embeddings ``collab``.

        Args:
            emb: item embeddings, one row per item.
            seed: seeds weight init, k-means, shuffling and the positive draws of L_Div.
            device: where to train (``"auto"``: GPU if available).
            progress: show a progress bar.
            log: per-epoch stats, as ``RQVAE.fit``.
            collab: ``(N, latent_dim)`` frozen collaborative embeddings aligned with the rows of ``emb``
                (``tokenizer.collab`` in a run config); required unless ``alpha`` is 0. They stay attached
                (``attach_collab``) for joint training.

        Returns:
            ``self``, in eval mode.
        """
        self._check_fit_input(emb)
        device = resolve_device(device) if isinstance(device, str) else device
        self.to(device)
        self.attach_collab(collab, emb.shape[0])
        super().fit(emb, seed=seed, device=device, progress=progress, log=log)
        return self

    def _init_codebooks(self, x: Tensor, generator: torch.Generator) -> None:
        """Balanced k-means on the latents of all N items ``x (N, D)`` (``balanced_init``), else RQ-VAE's init."""
        cfg = self.config
        if not cfg.balanced_init:
            super()._init_codebooks(x, generator)
            return
        # LETTER's constrained k-means bounds cluster sizes to [s, 4 s], s = min(N / 2K, 50); ours gives every
        # code N // K or N // K + 1 items (within those bounds whenever N / K <= 200).
        z = torch.cat([self.encoder(self.standardize(chunk)) for chunk in x.split(65536)])  # (N, d)
        self.quantizer.init_kmeans(z, cfg.kmeans_iters, generator, balanced=True)

    def _quantize(self, z: Tensor) -> QuantizerOutput:
        """In training, the last level's codes of the batch ``z (B, d)`` are Sinkhorn-balanced (``train_sk_epsilon``)."""
        cfg = self.config
        if not self.training or cfg.train_sk_epsilon == 0:
            return self.quantizer(z)
        # LETTER's rq.py / vq.py: per-level sk_epsilons, Sinkhorn on the last level in the training forward only
        sk_epsilons = [0.0] * (cfg.num_levels - 1) + [cfg.train_sk_epsilon]
        return self.quantizer(z, sk_epsilons, cfg.train_sk_iters)

    @torch.no_grad()
    def begin_epoch(self, generator: torch.Generator) -> None:
        """Cluster each level's codewords into ``div_clusters`` balanced groups for this epoch's L_Div."""
        cfg = self.config
        if cfg.div_weight == 0:
            return
        groups = [
            balanced_kmeans(book.detach(), cfg.div_clusters, cfg.div_kmeans_iters, generator)[1]
            for book in self.quantizer.codebooks
        ]
        self._div_groups = torch.stack(groups)  # (L, K)

    def _loss_terms(
        self,
        xs: Tensor,
        x_hat: Tensor,
        q: QuantizerOutput,
        items: Tensor | None,
        generator: torch.Generator | None,
    ) -> dict[str, Tensor]:
        """RQ-VAE's ``recon`` and ``rq``, plus in training mode ``cf`` = alpha * L_CF and ``div`` = beta * L_Div."""
        cfg = self.config
        terms = super()._loss_terms(xs, x_hat, q, items, generator)
        if not self.training:
            return terms
        if cfg.alpha > 0:
            if self.collab is None or items is None:
                raise ValueError(
                    "letter: L_CF (alpha > 0) needs the collaborative embeddings (fit(collab=...) or "
                    "attach_collab) and the batch's catalogue rows (assign(x, items=...))"
                )
            # q.quantized has the value z_hat and, through the straight-through estimator, sends L_CF's
            # gradient to the encoder (as LETTER's released code, which passes x_q after its STE line).
            terms["cf"] = cfg.alpha * cf_loss(q.quantized, self.collab[items])
        if cfg.div_weight > 0:
            if self._div_groups is None:
                raise RuntimeError("letter: L_Div needs codeword groups; call begin_epoch() before training")
            per_level = []
            for level, book in enumerate(self.quantizer.codebooks):
                codes = q.codes[:, level]  # (B,)
                positives = sample_positive_codes(codes, self._div_groups[level], generator)
                per_level.append(diversity_loss(book[codes], book, codes, positives))
            # LETTER's vq.py adds beta * L_Div to each level's loss and rq.py averages the levels (reduction "mean")
            terms["div"] = cfg.div_weight * self.quantizer.combine_levels(per_level)
        return terms

    @torch.no_grad()
    def semantic_ids(self, emb: Tensor, batch_size: int = 4096) -> Tensor:
        """Codes, colliding groups repaired on the last level (``repair_collisions``), plus the dedup token.

        Example:
            >>> x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
            >>> cfg = LetterConfig(num_levels=2, codebook_size=8, latent_dim=4, hidden_dims=[16], epochs=2, alpha=0.0,
            ...                    div_clusters=2)
            >>> tok = Letter(cfg, input_dim=16).fit(x, seed=0, device="cpu", progress=False)
            >>> repaired, greedy = tok.semantic_ids(x), assign_semantic_ids(tok.encode(x))  # (N, L + 1) each
            >>> bool((repaired[:, -1] > 0).sum() < (greedy[:, -1] > 0).sum())  # fewer items need the dedup token
            True
        """
        codes = self.encode(emb, batch_size)
        if not self.config.repair_collisions:
            return assign_semantic_ids(codes)
        movers = colliding_items(codes)
        cost = torch.cat([
            self._last_level_distances(emb[chunk].to(self.device, torch.float32), codes[chunk].to(self.device))
            for chunk in movers.split(batch_size)
        ]) if len(movers) else emb.new_zeros(0, self.codebook_size)
        repaired = repair_collisions(
            codes, movers, cost.to(codes.device), self.config.sinkhorn_epsilon, self.config.sinkhorn_iters
        )
        return assign_semantic_ids(repaired)

    def _last_level_distances(self, x: Tensor, codes: Tensor) -> Tensor:
        """Squared distances ``(B, K)`` of the residuals entering the last level to its codewords."""
        was_training = self.training
        self.eval()
        z = self.encoder(self.standardize(x))  # (B, d)
        last = self.quantizer.residuals(z, codes)[:, -1]  # (B, d)
        self.train(was_training)
        return self.quantizer.distances(last, self.num_levels - 1)
