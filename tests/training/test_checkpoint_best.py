"""``best/`` belongs to the checkpoint a run resumes from, never to a killed attempt that the resumed run re-did.

On a non-deterministic device a killed attempt can select a best epoch that the resumed run, repeating the same
epoch from the last checkpoint, does not reach. Validation is scripted here to produce exactly that: the killed
attempt scores epoch 1 above epoch 0 and dies before epoch 1's checkpoint; the resumed run scores it below.
"""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import write_recbole
from sidrec.data.loaders import load_dataset
from sidrec.data.splits import leave_one_out
from sidrec.decoding.trie import SidTrie
from sidrec.models.tiger import Tiger, TigerConfig
from sidrec.tokenizers import RQVAE, RQVAEConfig
from sidrec.training import loop, schedules, two_stage
from sidrec.training.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    publish_best,
    resume_checkpoint,
    save_best,
    save_checkpoint,
    verify_checkpoint,
)
from sidrec.training.config import ScheduleConfig, TrainConfig

SMALL = dict(d_model=16, num_heads=2, d_kv=8, d_ff=32, num_encoder_layers=1, num_decoder_layers=1, dropout=0.0,
             user_buckets=0)
CFG = TrainConfig(epochs=2, batch_size=16, warmup_steps=1, eval_beam_size=4, device="cpu", bf16=False,
                  patience=10)


class Killed(Exception):
    """Stands for SIGKILL: the attempt stops where it is, leaving its files behind."""


def _setup(tmp_path):
    ds = load_dataset("recbole", write_recbole(tmp_path / "data", num_users=20, num_items=16))
    split = leave_one_out(ds, max_history=4)
    emb = torch.randn(ds.num_items, 6, generator=torch.Generator().manual_seed(0))
    tok_cfg = RQVAEConfig(num_levels=2, codebook_size=4, latent_dim=4, hidden_dims=[8], epochs=1, batch_size=16)
    tok = RQVAE(tok_cfg, input_dim=6).fit(emb, seed=0, device="cpu", progress=False)
    model = Tiger(TigerConfig(level_sizes=[4, 4, 16], max_history=4, **SMALL), torch.Generator().manual_seed(0))
    return model, tok, emb, split


def _train(kind, tmp_path, out, monkeypatch, scores, kill_at_checkpoint=None):
    """One attempt: ``scores`` are the validation NDCG@10 of its epochs; ``Killed`` at that checkpoint."""
    module = two_stage if kind == "two_stage" else schedules
    it = iter(scores)
    monkeypatch.setattr(module, "evaluate", lambda *a, **k: {"recall@10": 0.0, "ndcg@10": next(it)})
    calls, real_save = [], loop.save_checkpoint  # the one epoch loop saves for every kind of training

    def save(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == kill_at_checkpoint:
            raise Killed
        return real_save(*args, **kwargs)

    monkeypatch.setattr(loop, "save_checkpoint", save)
    model, tok, emb, split = _setup(tmp_path)
    try:
        if kind == "two_stage":
            sids = schedules.semantic_ids_for(tok, emb, model)
            two_stage.train_recommender(model, split, sids, SidTrie(sids, model.cfg.level_sizes), CFG, out,
                                        seed=0, progress=False)
        else:
            schedules.train_joint(model, tok, emb, split, CFG, ScheduleConfig(name="joint"), out, seed=0,
                                  progress=False)
    finally:
        monkeypatch.undo()
    return model, tok


@pytest.mark.parametrize("kind", ["two_stage", "joint"])
def test_best_from_a_killed_attempt_is_replaced_on_resume(tmp_path, monkeypatch, kind):
    out = tmp_path / "out"
    with pytest.raises(Killed):  # epoch 1 improves (0.5 > 0.1), then the attempt dies before its checkpoint
        _train(kind, tmp_path, out, monkeypatch, [0.1, 0.5], kill_at_checkpoint=2)
    kept = load_file(str(latest_checkpoint(out / "checkpoints") / "model.safetensors"))  # epoch 0's weights
    # What the killed attempt may have left in best/ (it did, before best/ became part of the checkpoint).
    model, tok = _setup(tmp_path)[:2]
    save_file({k: v + 1 for k, v in model.state_dict().items()}, str(out / "best" / "model.safetensors"))
    (out / "best" / "best.json").write_text(json.dumps({"epoch": 1, "valid": {"ndcg@10": 0.5}}))
    if kind == "joint":
        with torch.no_grad():
            tok.quantizer.codebooks.add_(1)
        tok.save(out / "best" / "tokenizer")

    _train(kind, tmp_path, out, monkeypatch, [0.05])  # the resumed run: epoch 1 does not improve here

    assert json.loads((out / "best" / "best.json").read_text())["epoch"] == 0
    prefix = "" if kind == "two_stage" else "recommender."
    best = load_file(str(out / "best" / "model.safetensors"))
    assert best.keys() == {k[len(prefix):] for k in kept if k.startswith(prefix)}
    assert all(torch.equal(v, kept[prefix + k]) for k, v in best.items())
    if kind == "joint":
        best_tok = load_file(str(out / "best" / "tokenizer" / "tokenizer.safetensors"))
        assert all(torch.equal(v, kept["tokenizer." + k]) for k, v in best_tok.items())


def test_snapshots_are_shared_checked_and_pruned(tmp_path):
    m = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(m.parameters())

    def write(folder):
        save_file(m.state_dict(), str(folder / "model.safetensors"))

    state = {"best_snapshot": save_best(tmp_path, 1, write)}
    save_checkpoint(tmp_path, 1, m, opt, state)
    save_best(tmp_path, 2, write)  # an attempt killed before naming it in a checkpoint
    ckpt = save_checkpoint(tmp_path, 2, m, opt, state)  # no new best: shares the first snapshot
    assert sorted(p.name for p in tmp_path.glob("best-*")) == ["best-000000001"]
    state = {"best_snapshot": save_best(tmp_path, 3, write)}
    save_checkpoint(tmp_path, 3, m, opt, state)  # ckpt 2 is still kept, and with it best-000000001
    assert sorted(p.name for p in tmp_path.glob("best-*")) == ["best-000000001", "best-000000003"]
    save_checkpoint(tmp_path, 4, m, opt, state)
    assert sorted(p.name for p in tmp_path.glob("best-*")) == ["best-000000003"]
    assert not ckpt.exists()
    snapshot = tmp_path / "best-000000003" / "model.safetensors"
    snapshot.write_bytes(snapshot.read_bytes()[:-3])  # a damaged snapshot makes its checkpoints unusable
    with pytest.raises(CheckpointError, match="best-000000003.*checksum"):
        verify_checkpoint(latest_checkpoint(tmp_path))


def test_checkpoint_of_an_older_version_adopts_its_best(tmp_path):
    m = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path / "checkpoints", 7, m, None, {"epoch": 1})  # no best_snapshot: written before them
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "best.json").write_text('{"epoch": 0}')
    saved = resume_checkpoint(tmp_path / "checkpoints", m)
    publish_best(tmp_path / "checkpoints", saved, tmp_path / "best")
    assert saved["best_snapshot"] == "best-000000007"
    assert (tmp_path / "checkpoints" / "best-000000007" / "best.json").read_text() == '{"epoch": 0}'
    save_checkpoint(tmp_path / "checkpoints", 8, m, None, saved)
    publish_best(tmp_path / "checkpoints", verify_checkpoint(latest_checkpoint(tmp_path / "checkpoints")),
                 tmp_path / "best")
    assert (tmp_path / "best" / "best.json").read_text() == '{"epoch": 0}'
