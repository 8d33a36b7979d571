"""Training schedules: phases, which parameters each phase moves, code recomputation, checkpoints, end to end."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_overrides, write_recbole
from sidrec.cli import main
from sidrec.config import ConfigError, load_config
from sidrec.data.loaders import load_dataset
from sidrec.data.splits import leave_one_out
from sidrec.models.tiger import Tiger, TigerConfig
from sidrec.serve.service import Recommender
from sidrec.tokenizers import RQVAE, RQVAEConfig, assign_semantic_ids
from sidrec.tokenizers.base import Assignment
from sidrec.training import loop
from sidrec.training.config import ScheduleConfig, TrainConfig
from sidrec.training.losses import LossesConfig, SODAConfig
from sidrec.training.metrics_log import read_jsonl
from sidrec.training.schedules import joint_losses, semantic_ids_for, set_phase, train_joint

SMALL = dict(d_model=16, num_heads=2, d_kv=8, d_ff=32, num_encoder_layers=1, num_decoder_layers=1, dropout=0.0,
             user_buckets=0)


class StraightThroughRQVAE(RQVAE):
    """RQ-VAE whose one-hot is straight-through (hard forward, softmax gradient): the naive joint baseline."""

    def assign(self, x, items=None, generator=None):
        a = super().assign(x, items, generator)
        soft = a.logits.softmax(-1)
        return a._replace(onehot=a.onehot + soft - soft.detach())


def setup(tmp_path, tokenizer_cls=RQVAE, latent_dim=0):
    ds = load_dataset("recbole", write_recbole(tmp_path / "data", num_users=30, num_items=24))
    split = leave_one_out(ds, max_history=4)
    emb = torch.randn(ds.num_items, 6, generator=torch.Generator().manual_seed(0))
    cfg = RQVAEConfig(num_levels=2, codebook_size=4, latent_dim=4, hidden_dims=[8], epochs=2, batch_size=16)
    tok = tokenizer_cls(cfg, input_dim=6).fit(emb, seed=0, device="cpu", progress=False)
    tok.zero_grad(set_to_none=True)  # fit leaves its last step's gradients behind
    model = Tiger(TigerConfig(level_sizes=[4, 4, 24], max_history=4, latent_dim=latent_dim, **SMALL),
                  torch.Generator().manual_seed(0))
    return model, tok, emb, split


def batch(split, n=8):
    return (torch.as_tensor(split.train.history[:n]), torch.as_tensor(split.train.user[:n]),
            torch.as_tensor(split.train.target[:n]))


def train_cfg(**kw):
    base = dict(epochs=4, batch_size=16, warmup_steps=1, eval_beam_size=10, device="cpu", bf16=False, patience=10)
    return TrainConfig(**{**base, **kw})


def test_phase_plans():
    alt = ScheduleConfig(name="alternating", cycle_epochs=3, finetune_epochs=2)
    assert [alt.phase(e, 8) for e in range(8)] == ["tokenizer", "recommender", "recommender"] * 2 + [
        "recommender"] * 2
    joint = ScheduleConfig(name="joint", finetune_epochs=1)
    assert [joint.phase(e, 3) for e in range(3)] == ["joint", "joint", "recommender"]
    assert {ScheduleConfig().phase(e, 5) for e in range(5)} == {"recommender"}
    assert not alt.tokenizer_frozen_from(5, 8) and alt.tokenizer_frozen_from(6, 8)


def test_schedule_config_is_strict():
    with pytest.raises(ConfigError, match="schedule.losses.soda.gamma"):
        load_config(None, ["schedule.losses={soda: {gamma: 1}}"])
    with pytest.raises(ConfigError, match="schedule.name"):
        load_config(None, ["schedule.name=sometimes"])
    with pytest.raises(ConfigError, match="schedule.cycle_epochs"):
        load_config(None, ["schedule.cycle_epochs=1"])
    with pytest.raises(ConfigError, match="schedule.losses.psa"):
        load_config(None, ["schedule.losses={psa: {weight: 0.1}}"])  # needs ETEGRec's preference head
    # alignment weights assume the authors' mean-reduced tokenizer loss; a summed one would leave them inert
    with pytest.raises(ConfigError, match="tokenizer.params.reduction"):
        load_config(None, ["tokenizer.name=rqvae", "schedule.name=alternating", "schedule.losses={soda: {}}"])
    load_config(None, ["tokenizer.name=rqvae", "tokenizer.params={reduction: mean}", "schedule.name=alternating",
                       "schedule.losses={soda: {}}"])
    load_config(None, ["tokenizer.name=rqvae", "schedule.losses={soda: {}}"])  # two-stage: the tokenizer is fixed


def test_alternating_freezes_exactly_one_side_per_phase(tmp_path):
    model, tok, emb, split = setup(tmp_path)
    sched = ScheduleConfig(name="alternating", cycle_epochs=2, tokenizer_lr=1e-2,
                           losses=LossesConfig(soda=SODAConfig(weight=1.0)))
    snaps = []

    def snapshot(rec=None):
        snaps.append((rec and rec["phase"], {k: v.clone() for k, v in model.state_dict().items()},
                      {k: v.clone() for k, v in tok.named_parameters()}))

    snapshot()
    train_joint(model, tok, emb, split, train_cfg(epochs=4), sched, tmp_path / "out", seed=0, progress=False,
                log=snapshot)
    phases = [s[0] for s in snaps[1:]]
    assert phases == ["tokenizer", "recommender", "tokenizer", "recommender"]
    for (_, rec0, tok0), (phase, rec1, tok1) in zip(snaps, snaps[1:]):
        rec_changed = {k for k in rec0 if not torch.equal(rec0[k], rec1[k])}
        tok_changed = {k for k in tok0 if not torch.equal(tok0[k], tok1[k])}
        if phase == "tokenizer":
            assert rec_changed == set() and "quantizer.codebooks" in tok_changed
        else:
            assert tok_changed == set() and "embed.weight" in rec_changed


def test_codes_recomputed_after_tokenizer_phases_and_stay_unique(tmp_path):
    model, tok, emb, split = setup(tmp_path)
    before = semantic_ids_for(tok, emb, model)
    sched = ScheduleConfig(name="alternating", cycle_epochs=2, tokenizer_lr=5e-2)
    logs = []
    train_joint(model, tok, emb, split, train_cfg(epochs=2), sched, tmp_path / "out", seed=0, progress=False,
                log=logs.append)
    assert "usage" in logs[0] and "usage" not in logs[1]  # health is logged after the tokenizer phase only
    ckpt = tmp_path / "out" / "checkpoints"
    saved = load_file(str(ckpt / (ckpt / "LATEST").read_text().strip() / "model.safetensors"))
    table = saved["item_sids"]
    assert torch.equal(table, assign_semantic_ids(tok.encode(emb)))  # the table follows the updated tokenizer
    assert not torch.equal(table, before)  # and the tokenizer phase did move some codes
    assert len(torch.unique(table, dim=0)) == len(table)  # SID -> item stays one-to-one
    assert {k.split(".")[0] for k in saved} == {"recommender", "tokenizer", "item_sids"}


def test_dedup_overflow_is_reported(tmp_path):
    model, tok, emb, _ = setup(tmp_path)
    small = Tiger(TigerConfig(level_sizes=[4, 4, 1], max_history=4, **SMALL))
    assert semantic_ids_for(tok, emb, model).shape == (len(emb), 3)
    with pytest.raises(RuntimeError, match="dedup level"):
        semantic_ids_for(tok, emb, small)


@pytest.mark.parametrize("soft_codes", [True, False])
def test_rec_loss_reaches_codebooks_only_through_soft_codes(tmp_path, soft_codes):
    model, tok, emb, split = setup(tmp_path, StraightThroughRQVAE)
    sched = ScheduleConfig(name="joint", soft_codes=soft_codes)
    tok.train()
    out = joint_losses(model, tok, emb, semantic_ids_for(tok, emb, model), *batch(split), sched, aligned=True)
    out["rec"].backward()
    grad = tok.quantizer.codebooks.grad
    if soft_codes:
        assert grad is not None and grad.abs().sum() > 0
    else:
        assert grad is None or grad.abs().sum() == 0


def test_soft_codes_give_the_same_loss_as_the_index_path(tmp_path):
    model, tok, emb, split = setup(tmp_path)
    sids = semantic_ids_for(tok, emb, model)
    tok.eval()
    hard = joint_losses(model.eval(), tok, emb, sids, *batch(split), ScheduleConfig(name="joint"), aligned=True)
    soft = joint_losses(model, tok, emb, sids, *batch(split), ScheduleConfig(name="joint", soft_codes=True),
                        aligned=True)
    assert torch.allclose(hard["rec"], soft["rec"], atol=1e-6)


def test_joint_checkpoint_resumes_exactly(tmp_path, monkeypatch):
    sched = ScheduleConfig(name="alternating", cycle_epochs=2, losses=LossesConfig(soda=SODAConfig(sampled=4)))
    model, tok, emb, split = setup(tmp_path)
    train_joint(model, tok, emb, split, train_cfg(epochs=3), sched, tmp_path / "a", seed=0, progress=False)

    model2, tok2, _, _ = setup(tmp_path)
    clock = iter(range(10**6))

    class FakeTime:  # the deadline check reads time.time() once per batch: stop in the middle of epoch 1
        time = staticmethod(lambda: next(clock))
        perf_counter = staticmethod(lambda: 0.0)

    monkeypatch.setattr(loop, "time", FakeTime)  # the one epoch loop reads the clock
    steps_per_epoch = -(-len(split.train.target) // 16)
    res = train_joint(model2, tok2, emb, split, train_cfg(epochs=3), sched, tmp_path / "b", seed=0,
                      progress=False, deadline=steps_per_epoch + 2)
    assert not res.finished and res.epochs_run == 1
    monkeypatch.undo()
    model3, tok3, _, _ = setup(tmp_path)  # a fresh process: everything comes from the checkpoint
    res = train_joint(model3, tok3, emb, split, train_cfg(epochs=3), sched, tmp_path / "b", seed=0, progress=False)
    assert res.finished
    for a, b in [(model, model3), (tok, tok3)]:
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.allclose(x, y, atol=1e-6), name


def test_two_stage_with_losses_leaves_the_tokenizer_alone(tmp_path):
    model, tok, emb, split = setup(tmp_path)
    before = {k: v.clone() for k, v in tok.state_dict().items()}
    sched = ScheduleConfig(losses=LossesConfig(soda=SODAConfig(weight=1.0)))
    train_joint(model, tok, emb, split, train_cfg(epochs=2), sched, tmp_path / "out", seed=0, progress=False)
    assert all(torch.equal(before[k], v) for k, v in tok.state_dict().items())


def test_cli_alternating_soda_on_tiger(tmp_path):
    run, args = tiny_overrides(tmp_path)
    extra = ["schedule.name=alternating", "schedule.losses={soda: {weight: 0.5, sampled: 4}}", "train.epochs=3",
             "schedule.finetune_epochs=1", "schedule.tokenizer_lr=0.01", "tokenizer.params.reduction=mean"]
    assert main(["run", "configs/ml-100k-demo.yaml", *args, *extra, "--quiet"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["test.ndcg@10"] <= 1.0
    log = [r for r in read_jsonl(run / "recommender" / "metrics.jsonl") if r["kind"] == "epoch"]
    assert [r["phase"] for r in log] == ["tokenizer", "recommender", "recommender"]
    # model/tokenizer/ holds the updated tokenizer and its SIDs beside the model; tokenizer/ stays the fit
    trained = run / "model" / "tokenizer"
    assert metrics["tokenizer.health"] == json.loads((trained / "health.json").read_text())
    fitted = np.load(run / "tokenizer" / "sids.npy")
    assert not np.array_equal(np.load(trained / "sids.npy"), fitted)  # the tokenizer epoch moved codes
    assert not (run / "tokenizer" / "pretrained").exists()
    assert Recommender.from_run(run).item_sids.tolist() == np.load(trained / "sids.npy").tolist()
    # switching back to two-stage trains on the tokenize stage's SIDs, and the model no longer has its own
    assert main(["run", "configs/ml-100k-demo.yaml", *args, "train.epochs=1", "--quiet"]) == 0
    assert np.array_equal(np.load(run / "tokenizer" / "sids.npy"), fitted)
    assert not trained.exists()
    assert Recommender.from_run(run).item_sids.tolist() == fitted.tolist()


def test_assignment_contract_fields():
    assert Assignment._fields == ("codes", "onehot", "logits", "latent", "quantized", "reconstruction", "loss",
                                  "terms")


def test_lr_schedule_moves_every_param_group(tmp_path, monkeypatch):
    model, tok, emb, split = setup(tmp_path)
    seen = []
    step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        seen.append([g["lr"] for g in self.param_groups])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    cfg = train_cfg(epochs=2, warmup_steps=3, lr=1e-3)
    sched = ScheduleConfig(name="joint", tokenizer_lr=1e-2)
    train_joint(model, tok, emb, split, cfg, sched, tmp_path / "out", seed=0, progress=False)
    total = len(seen)
    assert total > 3
    for i, lrs in enumerate(seen):
        factor = loop.lr_factor(i, total, 3, cfg.scheduler)
        # the recommender's and the tokenizer's group follow the same warm-up and decay from their own base rate
        assert lrs == pytest.approx([1e-3 * factor, 1e-2 * factor])


def test_frozen_tokenizer_encoder_layers_stay_frozen_while_the_tokenizer_trains(tmp_path):
    model, tok, _, _ = setup(tmp_path)  # tokenizer encoder: 2 linear layers (6 -> 8 -> 4)
    linears = [m for m in tok.encoder if isinstance(m, torch.nn.Linear)]
    for layers, frozen in ((1, 1), (-1, 2)):  # DIGER's reference: bottom 3 of 4 with SDUD, all with FrqUD
        sched = ScheduleConfig(name="joint", frozen_tokenizer_layers=layers)
        for phase in ("joint", "tokenizer"):
            set_phase(model, tok, phase, sched)
            assert [p.requires_grad for m in linears for p in m.parameters()] == [False] * 2 * frozen + [True] * (
                4 - 2 * frozen)
            assert tok.quantizer.codebooks.requires_grad and all(p.requires_grad for p in tok.decoder.parameters())
            assert all(p.requires_grad for p in model.parameters()) == (phase == "joint")
    with pytest.raises(ConfigError, match="schedule.noisy_labels"):
        load_config(None, ["schedule.name=joint", "schedule.noisy_labels=true"])  # needs soft codes
