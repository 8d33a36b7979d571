"""RQ-VAE tokenizer (TIGER, METHODS 1.1): MLP encoder, residual quantiser, MLP decoder."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from sidrec.tokenizers.base import Assignment, QuantizerOutput, Tokenizer, codebook_health, require
from sidrec.tokenizers.residual import ResidualQuantizer
from sidrec.utils import adamw, resolve_device


@dataclass
class RQVAEConfig:
    """RQ-VAE hyper-parameters.

    Architecture defaults are TIGER's (3 levels x 256 codes x dim 32, encoder 512-256-128, beta 0.25, batch 1024,
    k-means init). Training defaults are ours: TIGER trains 20k epochs with Adagrad lr 0.4; we default to AdamW
    lr 1e-3 with input standardisation (what independent reproductions needed), a faster codebook and our
    initialisation (see ``_reset_parameters``); docs/results.md and docs/benchmarks.md give fits with them.
    TIGER's setting: ``optimizer="adagrad", lr=0.4, codebook_lr_scale=1.0, standardize=False, epochs=20000``.

    Args:
        num_levels: L, learned code levels.
        codebook_size: K, codes per level.
        latent_dim: d, dimension of the latent and the codewords.
        hidden_dims: encoder hidden sizes; the decoder mirrors them.
        beta: commitment weight.
        epochs: passes over the items.
        batch_size: items per step; also the size of the k-means initialisation batch.
        lr: learning rate of the encoder and decoder.
        codebook_lr_scale: the codebooks' learning rate is ``lr * codebook_lr_scale`` (ours). Adam and Adagrad
            move each parameter by about ``lr`` per step, so a codeword moves ~lr while a latent, a sum over a
            hidden layer's units, moves much further; with equal rates the codewords fall behind the latents and
            go unused.
        optimizer: ``"adagrad"`` (TIGER) or ``"adamw"``.
        weight_decay: weight decay of the optimiser.
        standardize: standardise each input dimension with the fit data's mean and std.
        kmeans_init: initialise the codebooks by k-means on one batch (else uniform +-1/K).
        kmeans_iters: Lloyd iterations of that k-means.
        dropout: dropout between MLP layers.
        reduction: how every term of the tokenizer loss reduces. ``"sum"`` (default here; METHODS 1.1 for
            TIGER, whose plain RQ-VAE has no added term): squared errors summed over the D inputs and the d latent
            dimensions, levels summed. ``"mean"``: the reductions of LETTER's and ETEGRec's code (``F.mse_loss``
            means over D and d, levels averaged), the scale on which the papers' weights of added terms (LETTER's
            alpha / beta, ETEGRec's mu / lambda, SODA's gamma, DIGER's L_REC) were chosen; the tokenizers and
            configs that add such terms use it. With Adam(W) or Adagrad a constant factor on the whole loss does
            not change the steps, so the two differ only in the balance between terms.

    Example:
        >>> cfg = RQVAEConfig(codebook_size=128, epochs=300)
        >>> cfg.num_levels, cfg.latent_dim, cfg.reduction
        (3, 32, 'sum')
    """

    num_levels: int = 3
    codebook_size: int = 256
    latent_dim: int = 32
    hidden_dims: list[int] = field(default_factory=lambda: [512, 256, 128])
    beta: float = 0.25
    epochs: int = 150
    batch_size: int = 1024
    lr: float = 1e-3
    codebook_lr_scale: float = 30.0
    optimizer: Literal["adagrad", "adamw"] = "adamw"
    weight_decay: float = 0.0
    standardize: bool = True
    kmeans_init: bool = True
    kmeans_iters: int = 20
    dropout: float = 0.0
    reduction: Literal["sum", "mean"] = "sum"

    def __post_init__(self) -> None:
        for name in ("num_levels", "codebook_size", "latent_dim", "epochs", "batch_size"):
            require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        require(
            all(h >= 1 for h in self.hidden_dims),
            "hidden_dims",
            f"sizes must be >= 1, got {self.hidden_dims}",
        )
        require(self.beta >= 0, "beta", f"must be >= 0, got {self.beta}")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(self.codebook_lr_scale > 0, "codebook_lr_scale", f"must be > 0, got {self.codebook_lr_scale}")
        require(
            self.optimizer in ("adagrad", "adamw"),
            "optimizer",
            f"must be 'adagrad' or 'adamw', got {self.optimizer!r}",
        )
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(self.kmeans_iters >= 0, "kmeans_iters", f"must be >= 0, got {self.kmeans_iters}")
        require(0 <= self.dropout < 1, "dropout", f"must be in [0, 1), got {self.dropout}")
        require(self.reduction in ("sum", "mean"), "reduction", f"must be 'sum' or 'mean', got {self.reduction!r}")


def mlp(sizes: list[int], dropout: float) -> nn.Sequential:
    """Linear layers with ReLU (and dropout) between them, none after the last."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class RQVAE(Tokenizer):
    """Residual-quantised variational autoencoder over item embeddings.

    x -> standardise -> encoder -> z (B, d) -> residual quantiser -> z + sg(z_hat - z) -> decoder -> x_hat.
    Loss (METHODS 1.1): ``||x - x_hat||^2`` plus, per level, the codebook term and ``beta`` times the commitment
    term; averaged over the batch, reduced over dimensions and levels per ``config.reduction``.

    Args:
        config: an ``RQVAEConfig``.
        input_dim: D, the embedding dimension.

    Example:
        >>> x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))  # 64 items, D = 16
        >>> cfg = RQVAEConfig(codebook_size=8, latent_dim=4, hidden_dims=[16], epochs=2)
        >>> tok = RQVAE(cfg, input_dim=16).fit(x, seed=0, device="cpu", progress=False)
        >>> tok.semantic_ids(x).shape  # (N, 4): 3 learned codes + dedup token
        torch.Size([64, 4])
    """

    name = "rqvae"

    def __init__(self, config: RQVAEConfig, input_dim: int) -> None:
        super().__init__(config, input_dim)
        sizes = [input_dim, *config.hidden_dims, config.latent_dim]
        self.encoder = mlp(sizes, config.dropout)
        self.quantizer = ResidualQuantizer(
            config.num_levels, config.codebook_size, config.latent_dim, config.beta, config.reduction
        )
        self.decoder = mlp(sizes[::-1], config.dropout)
        self._reset_parameters()

    def forward(self, x: Tensor) -> QuantizerOutput:
        """Returns ``QuantizerOutput(quantized (B, d), codes (B, L), loss, reconstruction (B, D))`` of ``assign``.

        ``reconstruction`` is x_hat in the standardised input space, the space the loss compares in.
        """
        a = self.assign(x)
        return QuantizerOutput(a.quantized, a.codes, a.loss, a.reconstruction)

    def assign(self, x: Tensor, items: Tensor | None = None, generator: torch.Generator | None = None) -> Assignment:
        """Differentiable view of the tokenization of a batch ``x (B, D)``, with the tokenizer's full loss.

        Used by ``fit`` and by the tokenizer phases of joint schedules, so both train the same method.
        ``onehot`` is a constant hard one-hot (the argmin has no gradient); ``logits`` (minus squared distances,
        residuals following the hard codes) carry gradients to the encoder and every codeword; ``loss`` is the sum
        of ``terms`` (here L_SQ = ``recon`` + ``rq``; subclasses add theirs).

        Args:
            x: item embeddings ``(B, D)`` on the tokenizer's device.
            items: ``(B,)`` catalogue rows of ``x``, for terms that need the items' identity (LETTER's L_CF).
            generator: source of the terms' random draws (LETTER's L_Div positives); default torch's RNG.

        Example:
            >>> tok = RQVAE(RQVAEConfig(codebook_size=8, latent_dim=4, hidden_dims=[16]), input_dim=16)
            >>> out = tok.assign(torch.randn(5, 16))
            >>> out.codes.shape, out.logits.shape  # (B, L), (B, L, K)
            (torch.Size([5, 3]), torch.Size([5, 3, 8]))
        """
        return self._deterministic_assign(x, items, generator)

    def _deterministic_assign(self, x: Tensor, items: Tensor | None, generator: torch.Generator | None) -> Assignment:
        xs = self.standardize(x)
        z = self.encoder(xs)  # (B, d)
        q = self._quantize(z)
        x_hat = self.decoder(q.quantized)  # (B, D)
        terms = self._loss_terms(xs, x_hat, q, items, generator)
        onehot = F.one_hot(q.codes, self.codebook_size).to(z.dtype)  # (B, L, K)
        logits = self.quantizer.logits(z, q.codes)  # (B, L, K)
        loss = torch.stack(list(terms.values())).sum()
        return Assignment(q.codes, onehot, logits, z, q.quantized, x_hat, loss, terms)

    def _quantize(self, z: Tensor) -> QuantizerOutput:
        """The quantiser's pass over the latents ``z (B, d)`` of a loss (LETTER balances its last level here)."""
        return self.quantizer(z)

    def recon_loss(self, xs: Tensor, x_hat: Tensor) -> Tensor:
        """``||xs - x_hat||^2`` of ``(B, D)`` inputs, averaged over the batch; over D summed or averaged.

        ``"mean"`` is LETTER's and ETEGRec's ``F.mse_loss(out, xs, reduction='mean')``.
        """
        if self.config.reduction == "mean":
            return F.mse_loss(x_hat, xs)
        return (xs - x_hat).pow(2).sum(-1).mean()

    def _loss_terms(
        self,
        xs: Tensor,
        x_hat: Tensor,
        q: QuantizerOutput,
        items: Tensor | None,
        generator: torch.Generator | None,
    ) -> dict[str, Tensor]:
        """The weighted terms of the loss (they sum to it): RQ-VAE's ``recon`` and ``rq`` (codebook + commitment).

        Args:
            xs: standardised inputs ``(B, D)``; x_hat: their reconstructions ``(B, D)``; q: the quantiser's output.
            items, generator: as in ``assign``, for subclasses.
        """
        return {"recon": self.recon_loss(xs, x_hat), "rq": q.loss}

    def _codes(self, x: Tensor) -> Tensor:
        return self.quantizer.encode(self.encoder(self.standardize(x)))

    def _reset_parameters(self) -> None:
        # Our choice (TIGER does not state its init). He init keeps the activation scale through the ReLU
        # layers, so the latents on which the codebooks are k-means initialised already have a trained
        # encoder's spread; PyTorch's default shrinks the variance ~6x per layer and training must then inflate
        # z, leaving the codewords behind. The decoder's output layer starts at zero: the first reconstruction
        # gradients are then small and do not throw the latents away from the fresh codebooks.
        enc = [m for m in self.encoder if isinstance(m, nn.Linear)]
        dec = [m for m in self.decoder if isinstance(m, nn.Linear)]
        for linear in enc[:-1] + dec[:-1]:
            nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
        nn.init.kaiming_normal_(enc[-1].weight, nonlinearity="linear")
        nn.init.zeros_(dec[-1].weight)
        for linear in enc + dec:
            nn.init.zeros_(linear.bias)
        self.quantizer.reset_parameters()

    def fit(
        self,
        emb: Tensor,
        *,
        seed: int,
        device: str | torch.device = "auto",
        progress: bool = True,
        log: Callable[[dict[str, Any]], None] | None = None,
        collab: Tensor | None = None,
    ) -> RQVAE:
        """Train from scratch on item embeddings ``emb (N, D)``.

        Args:
            emb: item embeddings, one row per item.
            seed: seeds weight init, the k-means init and the shuffling (fit is deterministic on CPU).
            device: where to train (``"auto"``: GPU if available); the model stays there.
            progress: show a progress bar.
            log: called after every epoch with ``{"epoch", "loss", "recon", **codebook_health}`` (health on
                all N items), so collapse is visible while it happens.
            collab: collaborative item embeddings; RQ-VAE does not use them (accepted for the common contract).

        Returns:
            ``self``, in eval mode.
        """
        self._check_fit_input(emb)
        device = resolve_device(device) if isinstance(device, str) else device
        generator = torch.Generator().manual_seed(seed)
        # Seed weight init and dropout without touching the caller's global RNG state.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            self._reset_parameters()
            self.to(device)
            x = emb.to(device, torch.float32)
            self._set_standardization(x, self.config.standardize)
            self._train(x, generator, progress, log)
        return self.eval()

    def _make_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        codebooks = self.quantizer.codebooks
        groups = [
            {"params": [p for p in self.parameters() if p is not codebooks]},
            {"params": [codebooks], "lr": cfg.lr * cfg.codebook_lr_scale},
        ]
        if cfg.optimizer == "adagrad":
            return torch.optim.Adagrad(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return adamw(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def _init_codebooks(self, x: Tensor, generator: torch.Generator) -> None:
        """k-means initialisation of the codebooks from the fit data ``x (N, D)``, under no_grad in eval mode."""
        # TIGER initialises the codebooks by k-means on the first batch; we use a random batch of that size.
        first = x[torch.randperm(x.shape[0], generator=generator)[: self.config.batch_size].to(x.device)]
        self.quantizer.init_kmeans(self.encoder(self.standardize(first)), self.config.kmeans_iters, generator)

    def _train(
        self,
        x: Tensor,
        generator: torch.Generator,
        progress: bool,
        log: Callable[[dict[str, Any]], None] | None,
    ) -> None:
        cfg = self.config
        n = x.shape[0]
        if cfg.kmeans_init:
            self.eval()
            with torch.no_grad():
                self._init_codebooks(x, generator)
        self.fitted.fill_(True)
        optimizer = self._make_optimizer()
        bar = tqdm(range(1, cfg.epochs + 1), desc=self.name, disable=not progress)
        for epoch in bar:
            self.train()
            perm = torch.randperm(n, generator=generator).to(x.device)
            loss_sum = x.new_zeros(())  # kept on device: no host sync per step
            recon_sum = x.new_zeros(())
            self.begin_epoch(generator)
            for start in range(0, n, cfg.batch_size):
                index = perm[start : start + cfg.batch_size]
                xb = x[index]
                # deterministic codes even for DIGER, whose pre-training is a plain RQ-VAE fit
                out = self._deterministic_assign(xb, index, generator)
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                optimizer.step()
                loss_sum += out.loss.detach() * len(xb)
                recon_sum += (self.standardize(xb) - out.reconstruction.detach()).pow(2).sum()
            epoch_loss = float(loss_sum) / n
            if not math.isfinite(epoch_loss):
                raise RuntimeError(
                    f"{self.name}: loss is {epoch_loss} at epoch {epoch}; lower tokenizer.params.lr"
                )
            if log is None and not progress:
                continue
            stats = {"epoch": epoch, "loss": epoch_loss, "recon": float(recon_sum) / n}
            stats.update(codebook_health(self.encode(x), cfg.codebook_size))
            bar.set_postfix(loss=f"{stats['loss']:.4f}", usage1=f"{stats['usage'][0]:.2f}")
            if log is not None:
                log(stats)
