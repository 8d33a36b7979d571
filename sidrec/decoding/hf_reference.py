"""The reference decoding stack: transformers' ``T5ForConditionalGeneration.generate`` over a Python dict trie.

LETTER's code (and TIGER re-implementations on transformers) decode with ``generate(num_beams=20,
prefix_allowed_tokens_fn=fn)``, where ``fn`` walks a nested-dict trie of token prefixes once per beam and step.
This module builds that stack from the weights of a sidrec ``Tiger``, so that ``benchmarks/decode_vs_hf.py`` can
time it against ``constrained_beam_search`` and the tests can check that both return the same items.

One modelling difference has to be closed for the two to rank identically: TIGER has one output head per SID level
and normalises over that level's codes, while transformers' T5 has one LM head over the whole vocabulary. The
model here stacks the level heads into one ``lm_head`` (rows = the level's code tokens) and at decoder position l
sets the logits of every token outside level l to -inf, so transformers' log_softmax over the vocabulary equals
TIGER's log_softmax over level l. Needs the ``dev`` extra (transformers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from sidrec.models.tiger import PAD, START, Tiger

try:
    from transformers import T5Config, T5ForConditionalGeneration
except ImportError as e:  # optional dependency
    raise ImportError(f"{e}; the transformers reference needs: pip install 'sidrec[dev]'") from e


class LevelMaskedT5(T5ForConditionalGeneration):
    """T5ForConditionalGeneration whose logits at decoder position l are -inf outside SID level l's tokens.

    ``token_level`` (vocab,) holds the SID level of each code token and -1 for the other tokens. The output
    position of each decoder input token is read off the token itself (start token -> level 0, a level-l code ->
    level l + 1), not from the KV cache: transformers renamed the cache argument (``past_key_values`` ->
    ``cache`` in 5.x), and a position taken from a cache it no longer found silently masked every step as
    level 0.
    """

    def __init__(self, config: T5Config, token_level: Tensor):
        super().__init__(config)
        self.register_buffer("token_level", token_level, persistent=False)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        dec_ids = kwargs.get("decoder_input_ids")
        if dec_ids is None or args:
            raise TypeError("LevelMaskedT5: pass decoder_input_ids (and everything else) by keyword")
        positions = self.token_level[dec_ids] + 1  # (B, L): the SID level each decoder position predicts
        out = super().forward(**kwargs)
        outside = self.token_level[None, None, :] != positions[..., None]  # (B, L, vocab)
        out.logits = out.logits.masked_fill(outside, float("-inf"))
        return out


def t5_supports_sdpa() -> bool:
    """Whether this transformers release has an SDPA attention path for T5 (5.x has; 4.x raises on it)."""
    return bool(getattr(T5ForConditionalGeneration, "_supports_sdpa", False))


def tiger_to_hf(model: Tiger, attn_implementation: str | None = None) -> LevelMaskedT5:
    """The same network as ``model`` (a Tiger with temperature 1) as a transformers T5, in eval mode.

    ``attn_implementation`` None picks "sdpa" where transformers' T5 has it, else "eager".

    Example:
        >>> hf = tiger_to_hf(model.eval())  # doctest: +SKIP
    """
    c = model.cfg
    attn_implementation = attn_implementation or ("sdpa" if t5_supports_sdpa() else "eager")
    if c.logit_temperature != 1.0:
        raise ValueError(f"logit_temperature: the reference needs 1.0, got {c.logit_temperature}")
    config = T5Config(
        vocab_size=c.vocab_size, d_model=c.d_model, d_kv=c.d_kv, num_heads=c.num_heads, d_ff=c.d_ff,
        num_layers=c.num_encoder_layers, num_decoder_layers=c.num_decoder_layers,
        relative_attention_num_buckets=c.rel_buckets, relative_attention_max_distance=c.rel_max_distance,
        dropout_rate=0.0, feed_forward_proj="relu", layer_norm_epsilon=1e-6, pad_token_id=PAD,
        decoder_start_token_id=START, eos_token_id=None, tie_word_embeddings=False,  # no output scaling
        attn_implementation=attn_implementation,
    )
    token_level = torch.full((c.vocab_size,), -1, dtype=torch.long)
    lm_head = torch.zeros(c.vocab_size, c.d_model)
    for level in range(model.num_levels):
        first = int(model.level_offsets[level])
        token_level[first : first + c.level_sizes[level]] = level
        lm_head[first : first + c.level_sizes[level]] = model.head_weight(level).detach().float().cpu()
    hf = LevelMaskedT5(config, token_level)
    # transformers ties lm_head to the input embedding; TIGER's heads are separate weights (a tied model's are
    # scaled rows of the embedding, copied as they are)
    hf.lm_head = torch.nn.Linear(c.d_model, c.vocab_size, bias=False)
    with torch.no_grad():
        hf.lm_head.weight.copy_(lm_head)
        hf.shared.weight.copy_(model.embed.weight)
        hf.encoder.embed_tokens = hf.decoder.embed_tokens = hf.shared
        for prefix, stack in (("encoder", model.encoder), ("decoder", model.decoder)):
            theirs = getattr(hf, prefix)
            theirs.block[0].layer[0].SelfAttention.relative_attention_bias.weight.copy_(stack.rel_bias.embedding.weight)
            theirs.final_layer_norm.weight.copy_(stack.final_norm.weight)
            for block, ours in zip(theirs.block, stack.blocks, strict=True):
                pairs = [(block.layer[0], ours.attn_norm if prefix == "encoder" else ours.self_attn_norm)]
                attn = [(block.layer[0].SelfAttention, ours.attn if prefix == "encoder" else ours.self_attn)]
                if prefix == "decoder":
                    pairs.append((block.layer[1], ours.cross_attn_norm))
                    attn.append((block.layer[1].EncDecAttention, ours.cross_attn))
                pairs.append((block.layer[-1], ours.ff_norm))
                for layer, norm in pairs:
                    layer.layer_norm.weight.copy_(norm.weight)
                for theirs_attn, ours_attn in attn:
                    for name in "qkvo":
                        getattr(theirs_attn, name).weight.copy_(getattr(ours_attn, name).weight)
                block.layer[-1].DenseReluDense.wi.weight.copy_(ours.ff.wi.weight)
                block.layer[-1].DenseReluDense.wo.weight.copy_(ours.ff.wo.weight)
    return hf.to(model.embed.weight.device).eval()


def dict_trie(token_sids: Tensor) -> dict:
    """Nested dicts ``{token: {token: ... {}}}`` of the catalogue's SID token sequences (LETTER's trie layout).

    Args:
        token_sids: (N, Lc) vocabulary tokens of each item's SID (code + level offset).
    """
    root: dict = {}
    for row in token_sids.tolist():
        node = root
        for token in row:
            node = node.setdefault(token, {})
    return root


def prefix_allowed_tokens_fn(trie: dict) -> Callable[[int, Tensor], list[int]]:
    """transformers' ``prefix_allowed_tokens_fn``: the tokens that follow the decoded prefix in ``trie``.

    The decoder sequence starts with the start token, which is not part of the trie. A prefix that left the
    trie (a beam that had no valid child) gets the start token, which the level mask then scores -inf.
    """

    def allowed(batch_id: int, sentence: Tensor) -> list[int]:
        node = trie
        for token in sentence.tolist()[1:]:
            node = node.get(token)
            if node is None:
                return [START]
        return list(node.keys())

    return allowed


@torch.no_grad()
def hf_beam_search(
    hf: LevelMaskedT5,
    ids: Tensor,
    mask: Tensor,
    token_sids: Tensor,
    trie: dict,
    beam_size: int = 20,
    topk: int = 10,
) -> Tensor:
    """Top-``topk`` items (B, topk) by ``hf.generate`` with the dict trie constraint; -1 = not a catalogue item.

    Args:
        hf: from ``tiger_to_hf``.
        ids, mask: (B, T) Tiger encoder inputs.
        token_sids: (N, Lc) SID tokens of each item (row i = item i).
        trie: ``dict_trie(token_sids)``.
        beam_size: ``num_beams``.
        topk: ``num_return_sequences``.

    Example:
        >>> items = hf_beam_search(hf, ids, mask, token_sids, dict_trie(token_sids))  # doctest: +SKIP
    """
    out = hf.generate(
        input_ids=ids, attention_mask=mask.long(), num_beams=beam_size, num_return_sequences=topk,
        max_new_tokens=token_sids.shape[1], prefix_allowed_tokens_fn=prefix_allowed_tokens_fn(trie),
        do_sample=False, length_penalty=1.0, early_stopping=True, return_dict_in_generate=True,
        output_scores=True,
    )
    seqs = out.sequences  # (B * topk, 1 + Lc)
    _check_beam_scores(hf, ids.repeat_interleave(topk, 0), mask.repeat_interleave(topk, 0), seqs,
                       out.sequences_scores)
    item_of = {tuple(row): i for i, row in enumerate(token_sids.tolist())}
    items = [item_of.get(tuple(row[1:]), -1) for row in seqs.tolist()]
    return torch.tensor(items).view(ids.shape[0], topk)


def _check_beam_scores(hf: LevelMaskedT5, ids: Tensor, mask: Tensor, seqs: Tensor, beam_scores: Tensor) -> None:
    """Guard against transformers drifting under the reference: ``generate``'s beam scores (cached, step by
    step) must equal the level-masked log-probability of the same sequences from one teacher-forced pass.

    transformers divides the summed log-probability by the generated length (Lc) or, in some releases, by the
    sequence length with the start token (Lc + 1); either is accepted, nothing else.
    """
    logits = hf(input_ids=ids, attention_mask=mask.long(), decoder_input_ids=seqs[:, :-1]).logits  # (R, Lc, V)
    logp = logits.float().log_softmax(-1).gather(2, seqs[:, 1:, None])[..., 0].sum(1)  # (R,)
    lc = seqs.shape[1] - 1
    if not any(torch.allclose(beam_scores.float() * n, logp, atol=1e-4, rtol=1e-4) for n in (lc, lc + 1)):
        worst = (beam_scores.float() * lc - logp).abs().max().item()
        raise RuntimeError(
            f"transformers' beam scores disagree with a teacher-forced pass (max |diff| {worst:.3g}): "
            "the reference no longer computes TIGER's per-level log-probabilities with this transformers release"
        )
