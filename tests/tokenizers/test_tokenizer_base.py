import math

import pytest
import torch

from sidrec.schema import from_dict
from sidrec.tokenizers import RQVAEConfig, assign_semantic_ids, build_tokenizer, codebook_health


def brute_force_dedup(codes: torch.Tensor) -> list[int]:
    seen: dict[tuple[int, ...], int] = {}
    out = []
    for row in codes.tolist():
        key = tuple(row)
        out.append(seen.get(key, 0))
        seen[key] = seen.get(key, 0) + 1
    return out


def test_dedup_token_counts_items_in_order_within_each_group():
    codes = torch.tensor([[1, 2], [3, 4], [1, 2], [1, 2], [3, 4], [0, 0]])
    sids = assign_semantic_ids(codes)
    assert sids[:, :2].tolist() == codes.tolist()
    assert sids[:, 2].tolist() == [0, 0, 1, 2, 1, 0]


def test_dedup_makes_every_sid_unique_on_random_codes():
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 3, (500, 2), generator=gen)  # only 9 tuples: many collisions
    sids = assign_semantic_ids(codes)
    assert sids.shape == (500, 3)
    assert len({tuple(r) for r in sids.tolist()}) == 500
    assert sids[:, 2].tolist() == brute_force_dedup(codes)


def test_dedup_edge_cases():
    assert assign_semantic_ids(torch.zeros(0, 3, dtype=torch.long)).shape == (0, 4)
    assert assign_semantic_ids(torch.tensor([[5, 5, 5]])).tolist() == [[5, 5, 5, 0]]
    with pytest.raises(ValueError, match="codes"):
        assign_semantic_ids(torch.tensor([1, 2, 3]))


def test_codebook_health_exact_values():
    # K = 4. Level 0 uses codes {0, 1} equally; level 1 uses {0, 1, 2} with counts 2, 1, 1.
    codes = torch.tensor([[0, 0], [0, 0], [1, 1], [1, 2]])
    h = codebook_health(codes, codebook_size=4)
    assert h["usage"] == [0.5, 0.75]
    assert h["dead_codes"] == [2, 1]
    assert h["perplexity"][0] == pytest.approx(2.0)
    entropy = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert h["perplexity"][1] == pytest.approx(math.exp(entropy))
    assert h["unique_tuples"] == 3
    assert h["max_group"] == 2
    assert h["collision_rate"] == 0.25


def test_codebook_health_is_json_serialisable_and_handles_empty():
    import json

    h = codebook_health(torch.randint(0, 8, (50, 3), generator=torch.Generator().manual_seed(1)), 8)
    json.dumps(h)
    empty = codebook_health(torch.zeros(0, 2, dtype=torch.long), 8)
    assert empty["usage"] == [0.0, 0.0] and empty["collision_rate"] == 0.0 and empty["max_group"] == 0
    with pytest.raises(ValueError, match=r"codes: values must lie in 0\.\.7"):
        codebook_health(torch.tensor([[0, 8]]), 8)


def test_config_from_params_converts_and_checks_types():
    cfg = from_dict(RQVAEConfig, {"lr": 1, "hidden_dims": [64, 32], "optimizer": "adagrad"}, "p")
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.hidden_dims == [64, 32] and cfg.optimizer == "adagrad"
    with pytest.raises(ValueError, match=r"p\.epochs: expected int, got bool"):
        from_dict(RQVAEConfig, {"epochs": True}, "p")
    with pytest.raises(ValueError, match=r"p\.standardize: expected bool, got int"):
        from_dict(RQVAEConfig, {"standardize": 1}, "p")
    with pytest.raises(ValueError, match=r"p\.hidden_dims: expected list\[int\]"):
        from_dict(RQVAEConfig, {"hidden_dims": [64, "32"]}, "p")
    with pytest.raises(ValueError, match=r"p\.optimizer: expected one of 'adagrad', 'adamw'"):
        from_dict(RQVAEConfig, {"optimizer": "sgd"}, "p")
    with pytest.raises(ValueError, match=r"p: expected a mapping"):
        from_dict(RQVAEConfig, [1, 2], "p")


def test_config_from_params_optional_and_generic_fields():
    from dataclasses import dataclass, field

    @dataclass
    class Cfg:
        temperature: float | None = None
        weights: dict[str, float] = field(default_factory=dict)

    assert from_dict(Cfg, {"temperature": None}, "p").temperature is None
    assert from_dict(Cfg, {"temperature": 2}, "p").temperature == 2.0
    assert from_dict(Cfg, {"weights": {"a": 1.0}}, "p").weights == {"a": 1.0}
    with pytest.raises(ValueError, match=r"p\.temperature: expected float \| None, got str"):
        from_dict(Cfg, {"temperature": "hot"}, "p")
    with pytest.raises(ValueError, match=r"p\.weights: expected dict"):
        from_dict(Cfg, {"weights": [1.0]}, "p")


def test_build_tokenizer_rejects_bad_params_naming_the_key():
    with pytest.raises(ValueError, match=r"tokenizer\.params\.codebok_size: unknown parameter"):
        build_tokenizer("rqvae", {"codebok_size": 8}, input_dim=4)
    with pytest.raises(ValueError, match=r"tokenizer\.params\.lr: expected float, got str"):
        build_tokenizer("rqvae", {"lr": "0.1"}, input_dim=4)
    with pytest.raises(ValueError, match=r"tokenizer\.params\.codebook_size: must be >= 1, got 0"):
        build_tokenizer("rqkmeans", {"codebook_size": 0}, input_dim=4)
    with pytest.raises(ValueError, match=r"tokenizer\.name: unknown tokenizer 'vq'"):
        build_tokenizer("vq", {}, input_dim=4)
    with pytest.raises(ValueError, match="input_dim"):
        build_tokenizer("rqvae", {}, input_dim=0)


def test_build_tokenizer_uses_params_and_defaults():
    tok = build_tokenizer("rqvae", {"codebook_size": 16, "num_levels": 2}, input_dim=10)
    assert (tok.name, tok.num_levels, tok.codebook_size, tok.input_dim) == ("rqvae", 2, 16, 10)
    assert tok.config.latent_dim == RQVAEConfig().latent_dim
