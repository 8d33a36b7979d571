"""ETEGRec's recommender (Liu et al., SIGIR 2025; METHODS 3): TIGER's T5 over SID tokens plus two alignment heads.

The generative part is ``Tiger`` with ETEGRec's sizes (6 + 6 layers, d_model 128, 4 heads x 64, FFN 512, history
<= 50, no user token). Two MLP heads feed the alignment losses of ``sidrec.training.losses``:

- ``sequence_latent``: z_E = MLP(mean_pool(encoder states)) in the tokenizer's latent space (L_SIA, and SODA's
  ``latent`` user source);
- ``preference``: h_D = MLP(first decoder hidden state) in the tokenizer's input space (L_PSA, against the
  tokenizer's reconstruction of the target item).

Our choices (not fixed by the paper): both MLPs are Linear(d_model, d_model) -> ReLU -> Linear; mean pooling skips
padding; weights drawn N(0, 1 / fan_in) with the model's seeded generator.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from sidrec.models.tiger import Tiger, TigerConfig, _is_int, mlp_head


@dataclass
class ETEGRecConfig(TigerConfig):
    """ETEGRec sizes: TigerConfig with ETEGRec's defaults and the two alignment heads' output sizes.

    Args:
        latent_dim: the tokenizer's latent dimension d (ETEGRec: 128), output of ``sequence_latent``.
        recon_dim: the tokenizer's input dimension D (ETEGRec: 256-d SASRec embeddings), output of ``preference``.
        tie_heads: ETEGRec scores each level with that level's token embeddings (default); False: TIGER's heads.
        (other fields: see ``TigerConfig``)

    Example:
        >>> cfg = ETEGRecConfig(level_sizes=[256, 256, 256, 4])  # 6 + 6 layers, 4 heads, FFN 512
    """

    num_heads: int = 4
    d_ff: int = 512
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    user_buckets: int = 0
    max_history: int = 50
    latent_dim: int = 128
    recon_dim: int = 256
    # ETEGRec's model.py: code_logits of level l = decoder state @ token_embeddings[l].weight.T (Tiger.head_weight)
    tie_heads: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("latent_dim", "recon_dim"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")


class ETEGRec(Tiger):
    """TIGER backbone with ETEGRec's sequence-latent and preference heads.

    Args:
        cfg: model sizes.
        generator: RNG for the weight initialisation (None = torch's global RNG).

    Example:
        >>> import torch
        >>> cfg = ETEGRecConfig(level_sizes=[8, 8, 2], d_model=32, num_heads=2, d_kv=16, d_ff=64,
        ...                     num_encoder_layers=1, num_decoder_layers=1, latent_dim=4, recon_dim=6)
        >>> model = ETEGRec(cfg)
        >>> history = torch.tensor([[[1, 2, 0], [3, 4, 1]], [[-1, -1, -1], [5, 6, 0]]])  # (B=2, H=2, Lc=3)
        >>> ids, mask = model.encoder_inputs(history, torch.tensor([0, 1]))
        >>> enc, dec = model.hidden_states(ids, mask, torch.tensor([[7, 1, 0], [2, 2, 1]]))
        >>> model.sequence_latent(enc, mask).shape, model.preference(dec).shape
        (torch.Size([2, 4]), torch.Size([2, 6]))
    """

    cfg: ETEGRecConfig

    def _add_heads(self, cfg: ETEGRecConfig) -> None:
        super()._add_heads(cfg)
        self.pref_head = mlp_head(cfg.d_model, cfg.recon_dim)

    def preference(self, dec: Tensor) -> Tensor:
        """h_D = MLP(first decoder hidden state): (B, Lc, d_model) -> (B, recon_dim)."""
        return self.pref_head(dec[:, 0])
