"""ETEGRec's recommender, and the soft SID embedding path it shares with TIGER."""

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_overrides
from sidrec.cli import main
from sidrec.models.etegrec import ETEGRec, ETEGRecConfig
from sidrec.models.registry import load_recommender
from sidrec.models.tiger import Tiger, TigerConfig, save_model
from sidrec.training.metrics_log import read_jsonl

SMALL = dict(d_model=16, num_heads=2, d_kv=8, d_ff=32, num_encoder_layers=1, num_decoder_layers=1, dropout=0.0)


def test_paper_sizes():
    cfg = ETEGRecConfig(level_sizes=[256, 256, 256, 4])
    model = ETEGRec(cfg)
    assert (cfg.num_encoder_layers, cfg.num_decoder_layers, cfg.d_model) == (6, 6, 128)
    assert (cfg.num_heads, cfg.d_kv, cfg.d_ff, cfg.max_history, cfg.user_buckets) == (4, 64, 512, 50, 0)
    assert len(model.encoder.blocks) == 6 and len(model.decoder.blocks) == 6
    assert model.encoder.blocks[0].ff.wi.weight.shape == (512, 128)
    assert model.encoder.blocks[0].attn.q.weight.shape == (256, 128)  # 4 heads x 64
    with pytest.raises(ValueError, match="recon_dim"):
        ETEGRecConfig(level_sizes=[4, 2], recon_dim=0)


def _inputs(model, B=3, H=4):
    g = torch.Generator().manual_seed(0)
    sizes = model.cfg.level_sizes
    history = torch.stack([torch.randint(k, (B, H), generator=g) for k in sizes], -1)  # (B, H, Lc)
    history[0, :2] = -1  # left padding
    target = torch.stack([torch.randint(k, (B,), generator=g) for k in sizes], -1)  # (B, Lc)
    ids, mask = model.encoder_inputs(history, torch.arange(B))
    return history, target, ids, mask


@pytest.mark.parametrize("user_buckets", [0, 5])
def test_soft_path_equals_index_path_and_passes_gradients(user_buckets):
    model = ETEGRec(ETEGRecConfig(level_sizes=[6, 6, 3], user_buckets=user_buckets, latent_dim=4, recon_dim=5,
                                  max_history=4, **SMALL)).eval()
    history, target, ids, mask = _inputs(model)
    hist_onehot = F.one_hot(history[..., :2].clamp(min=0), 6).float().requires_grad_()  # (B, H, 2, 6)
    tgt_onehot = F.one_hot(target[:, :2], 6).float().requires_grad_()  # (B, 2, 6)
    enc, dec = model.hidden_states(ids, mask, target)
    enc_s, dec_s = model.hidden_states(ids, mask, target, hist_onehot, tgt_onehot)
    assert torch.allclose(enc, enc_s, atol=1e-6) and torch.allclose(dec, dec_s, atol=1e-6)
    (dec_s.sum() + enc_s.sum()).backward()
    assert tgt_onehot.grad[:, 0].abs().sum() > 0  # level 0 of the target is a decoder input
    assert hist_onehot.grad[1:].abs().sum() > 0
    assert hist_onehot.grad[0, :2].abs().sum() == 0  # padding rows are not embedded from the one-hot


def test_soft_path_rejects_mismatched_levels():
    model = Tiger(TigerConfig(level_sizes=[6, 4, 3], max_history=4, **SMALL))
    with pytest.raises(ValueError, match="onehot"):
        model.sid_embeddings(torch.zeros(2, 2, 6))  # level 1 has 4 codes, not 6


def test_alignment_heads_and_save_load(tmp_path):
    model = ETEGRec(ETEGRecConfig(level_sizes=[6, 6, 3], latent_dim=4, recon_dim=5, max_history=4, **SMALL),
                    torch.Generator().manual_seed(0)).eval()
    _, target, ids, mask = _inputs(model)
    enc, dec = model.hidden_states(ids, mask, target)
    z = model.sequence_latent(enc, mask)
    assert z.shape == (3, 4) and model.preference(dec).shape == (3, 5)
    # padding does not change the mean-pooled latent
    widened = torch.cat([torch.zeros_like(ids[:, :3]), ids], 1), torch.cat([torch.zeros_like(mask[:, :3]), mask], 1)
    assert torch.allclose(model.sequence_latent(model.encode(*widened), widened[1]), z, atol=1e-5)
    save_model(model, tmp_path / "m")
    loaded = load_recommender(tmp_path / "m")
    assert isinstance(loaded, ETEGRec)
    assert torch.equal(loaded.pref_head[0].weight, model.pref_head[0].weight)
    tiger = Tiger(TigerConfig(level_sizes=[6, 6, 3], **SMALL))
    save_model(tiger, tmp_path / "t")
    assert type(load_recommender(tmp_path / "t")) is Tiger


def test_cli_etegrec_alternating(tmp_path):
    run, args = tiny_overrides(tmp_path)
    extra = ["model.name=etegrec", "schedule.name=alternating", "train.epochs=3", "schedule.warmup_epochs=1",
             "schedule.losses={sia: {weight: 0.01}, psa: {weight: 0.01}}", "schedule.finetune_epochs=1",
             "tokenizer.params.reduction=mean"]
    assert main(["run", "configs/ml-100k-demo.yaml", *args, *extra, "--quiet"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["test.recall@10"] <= 1.0
    log = [r for r in read_jsonl(run / "recommender" / "metrics.jsonl") if r["kind"] == "epoch"]
    assert "loss.sia" not in log[0] and "loss.sia" in log[1] and "loss.psa" in log[1]  # warm-up, then aligned
    assert json.loads((run / "model" / "model.json").read_text())["recon_dim"] == 8  # the embedding size
    assert main(["evaluate", str(run), "--quiet"]) == 0


def test_heads_are_tied_to_each_levels_token_embeddings():
    """ETEGRec's code scores level l with that level's token embeddings: no head weights of their own, logits
    h @ E_l^T (times d_model**-0.5), and the recommendation loss trains those rows through the output alone."""
    cfg = ETEGRecConfig(level_sizes=[6, 6, 3], latent_dim=4, recon_dim=5, max_history=4, **SMALL)
    model = ETEGRec(cfg, torch.Generator().manual_seed(0)).eval()
    untied = ETEGRec(ETEGRecConfig(**{**cfg.__dict__, "tie_heads": False}))
    assert cfg.tie_heads and model.heads is None
    assert untied.num_parameters() - model.num_parameters() == sum(cfg.level_sizes) * cfg.d_model
    _, target, ids, mask = _inputs(model)
    _, dec = model.hidden_states(ids, mask, target)
    dec = dec.detach()  # only the output projection carries gradient below
    logits = model.all_level_logits(dec)
    for level, first in enumerate(model.level_offsets.tolist()):
        rows = model.embed.weight[first : first + cfg.level_sizes[level]]  # (K_l, d) level l's input tokens
        assert torch.allclose(logits[level], dec[:, level] @ rows.T * cfg.d_model**-0.5, atol=1e-6)
    model.rec_loss(logits, target).backward()
    grad = model.embed.weight.grad.abs().sum(1)  # (vocab,)
    sid_rows = slice(int(model.level_offsets[0]), int(model.level_offsets[-1]) + cfg.level_sizes[-1])
    assert bool((grad[sid_rows] > 0).all())  # every code of every level is trained by the softmax over its level
    assert grad[: sid_rows.start].sum() == 0 and grad[sid_rows.stop :].sum() == 0  # pad, start, users: not scored
    # the tie is live: moving one code's embedding moves that code's logit
    with torch.no_grad():
        model.embed.weight[int(model.level_offsets[1]) + 2] += 1.0
    moved = model.all_level_logits(dec)
    assert not torch.allclose(moved[1][:, 2], logits[1][:, 2]) and torch.equal(moved[0], logits[0].detach())
