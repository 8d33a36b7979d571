"""Our T5 stacks (sidrec.models.t5, driven through Tiger) against transformers' T5Model with copied weights.

Name mapping (ours -> transformers), i = block index; see also the table in sidrec/models/t5.py:
    embed                                 -> shared (also encoder.embed_tokens / decoder.embed_tokens, tied)
    {encoder,decoder}.rel_bias.embedding  -> {encoder,decoder}.block.0.layer.0.SelfAttention
                                             .relative_attention_bias
    encoder.blocks.i.attn_norm / attn     -> encoder.block.i.layer.0.layer_norm / SelfAttention
    encoder.blocks.i.ff_norm / ff         -> encoder.block.i.layer.1.layer_norm / DenseReluDense
    decoder.blocks.i.self_attn_norm / self_attn    -> decoder.block.i.layer.0.layer_norm / SelfAttention
    decoder.blocks.i.cross_attn_norm / cross_attn  -> decoder.block.i.layer.1.layer_norm / EncDecAttention
    decoder.blocks.i.ff_norm / ff         -> decoder.block.i.layer.2.layer_norm / DenseReluDense
    {encoder,decoder}.final_norm          -> {encoder,decoder}.final_layer_norm
    heads.*                               -> no counterpart (T5Model has no LM head)
"""

import re

import pytest
import torch

from sidrec.models.t5 import relative_position_bucket
from sidrec.models.tiger import Tiger, TigerConfig

transformers = pytest.importorskip("transformers")

LEVELS = [8, 8, 8, 3]

# (regex over our parameter name, transformers replacement); the first rule that matches applies
NAME_MAP = [
    (r"^embed\.weight$", "shared.weight"),
    (
        r"^(encoder|decoder)\.rel_bias\.embedding\.weight$",
        r"\1.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
    ),
    (r"^encoder\.blocks\.(\d+)\.attn_norm\.", r"encoder.block.\1.layer.0.layer_norm."),
    (r"^encoder\.blocks\.(\d+)\.attn\.", r"encoder.block.\1.layer.0.SelfAttention."),
    (r"^encoder\.blocks\.(\d+)\.ff_norm\.", r"encoder.block.\1.layer.1.layer_norm."),
    (r"^encoder\.blocks\.(\d+)\.ff\.", r"encoder.block.\1.layer.1.DenseReluDense."),
    (r"^decoder\.blocks\.(\d+)\.self_attn_norm\.", r"decoder.block.\1.layer.0.layer_norm."),
    (r"^decoder\.blocks\.(\d+)\.self_attn\.", r"decoder.block.\1.layer.0.SelfAttention."),
    (r"^decoder\.blocks\.(\d+)\.cross_attn_norm\.", r"decoder.block.\1.layer.1.layer_norm."),
    (r"^decoder\.blocks\.(\d+)\.cross_attn\.", r"decoder.block.\1.layer.1.EncDecAttention."),
    (r"^decoder\.blocks\.(\d+)\.ff_norm\.", r"decoder.block.\1.layer.2.layer_norm."),
    (r"^decoder\.blocks\.(\d+)\.ff\.", r"decoder.block.\1.layer.2.DenseReluDense."),
    (r"^(encoder|decoder)\.final_norm\.", r"\1.final_layer_norm."),
]


def hf_name(ours: str) -> str | None:
    for pattern, repl in NAME_MAP:
        if re.search(pattern, ours):
            return re.sub(pattern, repl, ours)
    return None


def build_pair(attn_implementation: str) -> tuple[Tiger, "transformers.T5Model"]:
    cfg = TigerConfig(
        level_sizes=LEVELS,
        d_model=64,
        num_heads=4,
        d_kv=16,
        d_ff=128,
        num_encoder_layers=2,
        num_decoder_layers=2,
        dropout=0.0,
        user_buckets=10,
        rel_buckets=32,
        rel_max_distance=128,
    )
    ours = Tiger(cfg, generator=torch.Generator().manual_seed(0)).eval()
    hf_cfg = transformers.T5Config(
        vocab_size=cfg.vocab_size,
        d_model=64,
        d_kv=16,
        num_heads=4,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        dropout_rate=0.0,
        feed_forward_proj="relu",
        layer_norm_epsilon=1e-6,
        pad_token_id=0,
        decoder_start_token_id=1,
        attn_implementation=attn_implementation,
    )
    hf = transformers.T5Model(hf_cfg).eval()
    hf_state = hf.state_dict()
    copied = set()
    with torch.no_grad():
        for name, param in ours.named_parameters():
            target = hf_name(name)
            if target is None:
                assert name.startswith("heads."), name
                continue
            assert hf_state[target].shape == param.shape, name
            hf_state[target].copy_(param)
            copied.add(target)
    # every transformers weight is covered (the embed_tokens entries are tied views of shared)
    uncovered = {n for n in hf_state if n not in copied and not n.endswith("embed_tokens.weight")}
    assert not uncovered, uncovered
    assert torch.equal(hf.encoder.embed_tokens.weight, ours.embed.weight)
    return ours, hf


def make_batch(model: Tiger, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    B, H = 5, 6
    history = torch.stack([torch.randint(0, k, (B, H), generator=g) for k in LEVELS], dim=-1)  # (B, H, Lc)
    for b, n_pad in enumerate([0, 1, 3, 5, 2]):
        history[b, :n_pad] = -1
    users = torch.tensor([0, 3, 17, 123456, 9])
    ids, mask = model.encoder_inputs(history, users)
    target = torch.stack([torch.randint(0, k, (B,), generator=g) for k in LEVELS], dim=-1)  # (B, Lc)
    return ids, mask, target


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (8, 20)])
def test_relative_position_buckets_match_transformers(
    bidirectional: bool, num_buckets: int, max_distance: int
) -> None:
    from transformers.models.t5.modeling_t5 import T5Attention

    relative = torch.arange(-400, 401)[None, :] - torch.arange(3)[:, None]  # (3, 801)
    ours = relative_position_bucket(relative, bidirectional, num_buckets, max_distance)
    theirs = T5Attention._relative_position_bucket(relative, bidirectional, num_buckets, max_distance)
    assert torch.equal(ours, theirs)
    assert ours.min() >= 0 and ours.max() == num_buckets - 1


def hf_decoder_ids(target: torch.Tensor) -> torch.Tensor:
    """[start=1, c_0 + offset_0, c_1 + offset_1, c_2 + offset_2], written out independently of Tiger."""
    offsets = torch.tensor([2, 2 + LEVELS[0], 2 + LEVELS[0] + LEVELS[1]])
    return torch.cat([torch.ones(len(target), 1, dtype=torch.long), target[:, :-1] + offsets], dim=1)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_hidden_states_match_transformers(attn_implementation: str) -> None:
    if attn_implementation == "sdpa" and not transformers.T5Model._supports_sdpa:
        pytest.skip(f"transformers {transformers.__version__} has no SDPA path for T5 (5.x has)")
    ours, hf = build_pair(attn_implementation)
    ids, mask, target = make_batch(ours)
    assert (~mask).any(), "the batch must contain encoder padding"
    dec_ids = hf_decoder_ids(target)
    with torch.no_grad():
        enc, dec = ours.hidden_states(ids, mask, target)
        out = hf(input_ids=ids, attention_mask=mask.long(), decoder_input_ids=dec_ids)
    torch.testing.assert_close(enc, out.encoder_last_hidden_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dec, out.last_hidden_state, atol=1e-5, rtol=1e-5)


def test_gradients_match_transformers() -> None:
    ours, hf = build_pair("eager")
    ids, mask, target = make_batch(ours, seed=1)
    dec_ids = hf_decoder_ids(target)
    w = torch.randn(*target.shape, 64, generator=torch.Generator().manual_seed(2))
    enc, dec = ours.hidden_states(ids, mask, target)
    ((dec * w).sum() + (enc * mask[..., None]).sum()).backward()
    out = hf(input_ids=ids, attention_mask=mask.long(), decoder_input_ids=dec_ids)
    ((out.last_hidden_state * w).sum() + (out.encoder_last_hidden_state * mask[..., None]).sum()).backward()
    hf_params = dict(hf.named_parameters())
    for name, param in ours.named_parameters():
        target_name = hf_name(name)
        if target_name is None:
            continue
        torch.testing.assert_close(param.grad, hf_params[target_name].grad, atol=1e-4, rtol=1e-4, msg=name)


def test_cached_steps_match_transformers_decoder() -> None:
    """Stepping our decoder one position at a time through the KV cache reproduces transformers' full pass."""
    ours, hf = build_pair("eager")
    ids, mask, target = make_batch(ours, seed=3)
    dec_ids = hf_decoder_ids(target)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask.long(), decoder_input_ids=dec_ids).last_hidden_state
        cache = ours.start_decoding(ids, mask)
        steps = []
        for pos in range(len(LEVELS)):
            h, cache = ours.decoder(ours.embed(dec_ids[:, pos : pos + 1]), cache)  # (B, 1, d)
            steps.append(h)
            assert cache.length == pos + 1
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, atol=1e-5, rtol=1e-5)
