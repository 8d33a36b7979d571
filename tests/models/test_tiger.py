import json

import pytest
import torch

from sidrec.models.tiger import DecoderCache, Tiger, TigerConfig, load_model, save_model

LEVELS = [6, 5, 3]  # offsets 2, 8, 13; user tokens from 16


def tiny_config(**overrides) -> TigerConfig:
    sizes = dict(
        level_sizes=LEVELS,
        d_model=32,
        num_heads=2,
        d_kv=8,
        d_ff=64,
        num_encoder_layers=2,
        num_decoder_layers=2,
        dropout=0.0,
        user_buckets=7,
        max_history=5,
    )
    sizes.update(overrides)
    return TigerConfig(**sizes)


def tiny_model(seed: int = 0, **overrides) -> Tiger:
    return Tiger(tiny_config(**overrides), generator=torch.Generator().manual_seed(seed)).eval()


def random_batch(
    B: int, H: int, seed: int, pads: list[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """history (B, H, Lc) left-padded with pads[b] rows of -1, and targets (B, Lc)."""
    g = torch.Generator().manual_seed(seed)
    history = torch.stack([torch.randint(0, k, (B, H), generator=g) for k in LEVELS], dim=-1)
    for b, n in enumerate(pads or [0] * B):
        history[b, :n] = -1
    target = torch.stack([torch.randint(0, k, (B,), generator=g) for k in LEVELS], dim=-1)
    return history, target


def test_encoder_inputs_layout() -> None:
    model = tiny_model()
    history = torch.tensor([[[-1, -1, -1], [1, 2, 0], [5, 4, 2]], [[0, 0, 0], [3, 1, 1], [2, 2, 2]]])
    user_tok = [16 + (u * 2654435761) % 2**32 % 7 for u in (4, 9)]
    ids, mask = model.encoder_inputs(history, torch.tensor([4, 9]))
    expected = torch.tensor(
        [
            [0, 0, 0, user_tok[0], 2 + 1, 8 + 2, 13 + 0, 2 + 5, 8 + 4, 13 + 2],
            [user_tok[1], 2, 8, 13, 2 + 3, 8 + 1, 13 + 1, 2 + 2, 8 + 2, 13 + 2],
        ]
    )
    assert torch.equal(ids, expected)
    assert torch.equal(mask, expected != 0)

    ids, mask = model.encoder_inputs(history, None)  # no user token
    assert torch.equal(ids, expected[:, 1:] * (expected[:, 1:] < 16))
    assert mask.sum(1).tolist() == [6, 9]

    # H = 7 > max_history 5: four more pad rows for the first user, four older items for the second
    older = torch.stack([torch.full((4, 3), -1), torch.zeros(4, 3, dtype=torch.long)])
    long_history = torch.cat([older, history], dim=1)
    ids, _ = model.encoder_inputs(long_history, None)
    assert ids.shape == (2, 5 * 3)
    assert torch.equal(ids[:, -9:], expected[:, 1:] * (expected[:, 1:] < 16))


@pytest.mark.parametrize(
    "history, message",
    [
        ([[[1, 2, 0], [-1, -1, -1]]], "left padding"),
        ([[[-1, -1, -1], [1, -1, 0]]], "full SID"),
        ([[[-1, 2, -1], [1, 1, 0]]], "full SID"),
        ([[[0, 0, 0], [1, 5, 0]]], "level 1 must be in \\[0, 5\\)"),
        ([[[0, 0, 3], [1, 1, 0]]], "level 2"),
        ([[[0, 0], [1, 1]]], "3 SID levels"),
    ],
)
def test_encoder_inputs_rejects_bad_history(history: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_model().encoder_inputs(torch.tensor(history), None)


def test_user_token_hash_and_switch() -> None:
    model = tiny_model()
    history, target = random_batch(4, 3, seed=1)
    users = torch.tensor([0, 1, 12345, 2**40 + 3])
    expected = [16 + (u * 2654435761) % 2**32 % 7 for u in users.tolist()]  # exact Python integers
    assert model.encoder_inputs(history, users)[0][:, 0].tolist() == expected
    history, target = history[:2], target[:2]
    a_ids, a_mask = model.encoder_inputs(history, torch.tensor([1, 1]))
    b_ids, b_mask = model.encoder_inputs(history, torch.tensor([2, 2]))
    assert a_ids.shape == (2, 10) and a_ids[0, 0] != b_ids[0, 0]
    with torch.no_grad():
        assert not torch.allclose(model(a_ids, a_mask, target)[0], model(b_ids, b_mask, target)[0])

    off = tiny_model(user_buckets=0)
    assert off.embed.num_embeddings == 2 + sum(LEVELS)
    ids, mask = off.encoder_inputs(history, torch.tensor([1, 1]))  # users ignored when disabled
    assert ids.shape == (2, 9) and mask.all() and ids.max() < 2 + sum(LEVELS)
    with pytest.raises(ValueError, match="users"):
        model.encoder_inputs(history, torch.tensor([-1, 2]))


def test_left_padding_does_not_change_logits() -> None:
    model = tiny_model()
    history, target = random_batch(2, 3, seed=2)
    padded = torch.cat([torch.full((2, 2, 3), -1), history], dim=1)
    users = torch.tensor([5, 6])
    with torch.no_grad():
        plain = model(*model.encoder_inputs(history, users), target)
        with_pads = model(*model.encoder_inputs(padded, users), target)
    for a, b in zip(plain, with_pads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_kv_cache_steps_match_teacher_forcing() -> None:
    model = tiny_model(logit_temperature=0.7)
    history, target = random_batch(4, 4, seed=3, pads=[0, 1, 3, 2])
    ids, mask = model.encoder_inputs(history, torch.arange(4))
    with torch.no_grad():
        full = model(ids, mask, target)
        cache = model.start_decoding(ids, mask)
        assert isinstance(cache, DecoderCache) and cache.length == 0
        for level in range(len(LEVELS)):
            prev = None if level == 0 else target[:, level - 1]
            logits, cache = model.decode_step(cache, prev, level)
            assert logits.shape == (4, LEVELS[level]) and logits.dtype == torch.float32
            torch.testing.assert_close(logits, full[level], atol=1e-5, rtol=1e-5)
            assert [k.shape[2] for k in cache.self_k] == [level + 1] * 2
    # logit_temperature acts in the training loss only (LETTER): the logits, and so decoding, do not depend on it
    cold = Tiger(tiny_config(logit_temperature=1.0))
    cold.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(cold.eval()(ids, mask, target)[1], full[1])


def test_cache_index_select_duplicates_rows() -> None:
    model = tiny_model()
    history, target = random_batch(3, 2, seed=4, pads=[1, 0, 0])
    ids, mask = model.encoder_inputs(history, torch.arange(3))
    index = torch.tensor([2, 0, 0, 1])
    with torch.no_grad():
        full = model(ids, mask, target)
        cache = model.start_decoding(ids, mask)
        _, cache = model.decode_step(cache, None, 0)
        cache = cache.index_select(index)
        assert cache.num_rows == 4 and cache.enc_mask.shape == (4, ids.shape[1])
        logits, cache = model.decode_step(cache, target[index, 0], 1)
    torch.testing.assert_close(logits, full[1][index], atol=1e-5, rtol=1e-5)


def test_cache_expand_and_reorder_share_encoder_rows() -> None:
    """Beams share their user's encoder K/V (group > 1) and give the same logits as materialised rows."""
    model = tiny_model()
    history, target = random_batch(3, 2, seed=5, pads=[1, 0, 0])
    ids, mask = model.encoder_inputs(history, torch.arange(3))
    with torch.no_grad():
        full = model(ids, mask, target)
        cache = model.start_decoding(ids, mask)
        _, cache = model.decode_step(cache, None, 0)
        beams = cache.expand(2)  # rows 0,0,1,1,2,2
        assert beams.group == 2 and beams.cross_k[0].shape[0] == 3 and beams.num_rows == 6
        beams = beams.reorder(torch.tensor([1, 0, 1, 2, 3, 3, 4, 5, 4]))  # the beam widens to 3 per user
        assert beams.group == 3 and beams.cross_k[0].shape[0] == 3
        user = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
        logits, _ = model.decode_step(beams, target[user, 0], 1)
    torch.testing.assert_close(logits, full[1][user], atol=1e-5, rtol=1e-5)


def test_decode_step_rejects_wrong_level_and_codes() -> None:
    model = tiny_model()
    history, _ = random_batch(2, 2, seed=5)
    with torch.no_grad():
        cache = model.start_decoding(*model.encoder_inputs(history, None))
        with pytest.raises(ValueError, match="level must be 0"):
            model.decode_step(cache, torch.tensor([0, 1]), 1)
        with pytest.raises(ValueError, match="prev_codes"):
            model.decode_step(cache, torch.tensor([0, 1]), 0)
        _, cache = model.decode_step(cache, None, 0)
        with pytest.raises(ValueError, match="prev_codes"):
            model.decode_step(cache, torch.tensor([0, 6]), 1)  # level 0 has 6 codes


@pytest.mark.parametrize("chunk_rows", [3, 4096])
def test_score_sids_equals_sum_of_log_softmax(chunk_rows: int) -> None:
    model = tiny_model(logit_temperature=0.8)
    history, _ = random_batch(2, 3, seed=6, pads=[2, 0])
    ids, mask = model.encoder_inputs(history, torch.tensor([3, 4]))
    _, sids = random_batch(5, 1, seed=7)  # (M=5, Lc) candidates
    with torch.no_grad():
        scores = model.score_sids(ids, mask, sids, chunk_rows=chunk_rows)
        assert scores.shape == (2, 5)
        for m in range(5):
            target = sids[m].expand(2, -1)
            logits = model(ids, mask, target)
            manual = sum(lg.log_softmax(-1)[:, sids[m, level]] for level, lg in enumerate(logits))
            torch.testing.assert_close(scores[:, m], manual, atol=1e-5, rtol=1e-5)
    assert (scores < 0).all()


def test_loss_decreases_when_overfitting() -> None:
    torch.manual_seed(0)
    model = tiny_model(dropout=0.1).train()
    history, target = random_batch(8, 4, seed=8, pads=[0, 1, 2, 3, 0, 1, 2, 3])
    ids, mask = model.encoder_inputs(history, torch.arange(8))
    with torch.no_grad():
        manual = sum(
            torch.nn.functional.cross_entropy(lg, target[:, level])
            for level, lg in enumerate(model.eval()(ids, mask, target))
        ) / len(LEVELS)
        torch.testing.assert_close(model.loss(ids, mask, target), manual)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(50):
        loss = model.loss(ids, mask, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses


def test_dropout_only_in_train_mode() -> None:
    model = tiny_model(dropout=0.3)
    history, target = random_batch(2, 2, seed=9)
    ids, mask = model.encoder_inputs(history, None)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, mask, target)[0], model(ids, mask, target)[0], atol=0, rtol=0)
        model.train()
        assert not torch.allclose(model(ids, mask, target)[0], model(ids, mask, target)[0])


def test_bf16_autocast_runs_and_tracks_fp32() -> None:
    model = tiny_model()
    history, target = random_batch(3, 3, seed=10, pads=[0, 2, 1])
    ids, mask = model.encoder_inputs(history, torch.arange(3))
    with torch.no_grad():
        reference = model(ids, mask, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids, mask, target)
        loss = model.loss(ids, mask, target)
        with torch.no_grad():
            cache = model.start_decoding(ids, mask)
            step, cache = model.decode_step(cache, None, 0)
    assert cache.cross_k[0].dtype == torch.bfloat16 and cache.self_k[0].dtype == torch.bfloat16
    assert all(lg.dtype == torch.float32 for lg in logits) and step.dtype == torch.float32
    loss.backward()
    assert model.encoder.rel_bias.embedding.weight.grad.abs().sum() > 0
    for a, b in zip(logits, reference):
        torch.testing.assert_close(a.detach(), b, atol=0.1, rtol=0.05)
    torch.testing.assert_close(step, reference[0], atol=0.1, rtol=0.05)


def test_save_load_round_trip(tmp_path) -> None:
    model = tiny_model(logit_temperature=0.9)
    save_model(model, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["model.json", "model.safetensors"]
    loaded = load_model(tmp_path / "ckpt").eval()
    assert loaded.cfg == model.cfg
    history, target = random_batch(2, 3, seed=11, pads=[1, 0])
    ids, mask = model.encoder_inputs(history, torch.tensor([1, 2]))
    with torch.no_grad():
        for a, b in zip(model(ids, mask, target), loaded(ids, mask, target)):
            assert torch.equal(a, b)


def test_load_rejects_bad_checkpoints(tmp_path) -> None:
    save_model(tiny_model(), tmp_path)
    config = json.loads((tmp_path / "model.json").read_text())

    (tmp_path / "model.json").write_text(json.dumps({**config, "d_modle": 3, "extra": 1}))
    with pytest.raises(ValueError, match=r"model.json: unknown TigerConfig keys \['d_modle', 'extra'\]"):
        load_model(tmp_path)

    (tmp_path / "model.json").write_text(json.dumps({**config, "d_model": 48}))
    with pytest.raises(ValueError, match="model.safetensors: tensor .* has shape"):
        load_model(tmp_path)

    (tmp_path / "model.json").write_text(json.dumps({**config, "dropout": 1.5}))
    with pytest.raises(ValueError, match="model.json: dropout"):
        load_model(tmp_path)

    (tmp_path / "model.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(tmp_path)


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="level_sizes"):
        TigerConfig(level_sizes=[])
    with pytest.raises(ValueError, match="num_heads"):
        TigerConfig(level_sizes=[4], num_heads=0)
    with pytest.raises(ValueError, match="logit_temperature"):
        TigerConfig(level_sizes=[4], logit_temperature=0.0)


def test_parameter_count_at_default_sizes() -> None:
    model = Tiger(TigerConfig(level_sizes=[256, 256, 256, 8]))
    d, inner, ff = 128, 6 * 64, 1024
    encoder_layer = 4 * d * inner + 2 * d * ff + 2 * d  # q k v o, wi wo, two RMSNorms
    decoder_layer = 8 * d * inner + 2 * d * ff + 3 * d  # self + cross attention, wi wo, three RMSNorms
    embedding = (2 + 776 + 2000) * d
    heads = 776 * d
    per_stack_extra = 32 * 6 + d  # relative bias table, final RMSNorm
    expected = 4 * encoder_layer + 4 * decoder_layer + embedding + heads + 2 * per_stack_extra
    assert model.num_parameters() == expected == 4_914_560


def test_a_model_cast_to_bf16_attends_in_bf16() -> None:
    # the padding mask takes the model's dtype, so a bf16 model's attention scores are not promoted to fp32 by it
    from torch.overrides import TorchFunctionMode

    from sidrec.models.t5 import T5Decoder, T5Dims, T5Encoder

    class SoftmaxInputs(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.dtypes: list[torch.dtype] = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.Tensor.softmax:
                self.dtypes.append(args[0].dtype)
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    dims = T5Dims(d_model=32, num_heads=4, d_kv=8, d_ff=64)  # dropout 0: training attention is written out
    enc, dec = T5Encoder(dims, 2), T5Decoder(dims, 2)
    x, y = torch.randn(3, 6, 32), torch.randn(3, 2, 32)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[0, :4] = False
    ref = dec(y, dec.start(enc(x, mask), mask))[0]
    enc, dec = enc.to(torch.bfloat16), dec.to(torch.bfloat16)
    with SoftmaxInputs() as seen:
        out = dec(y.bfloat16(), dec.start(enc(x.bfloat16(), mask), mask))[0]
    assert seen.dtypes == [torch.bfloat16] * 6  # 2 encoder + 2 x (self + cross) decoder attentions
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.05)  # bf16 rounding; padded keys stay masked
