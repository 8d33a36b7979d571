import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_recbole
from sidrec.cli import main
from sidrec.data.loaders import load_dataset
from sidrec.data.splits import leave_one_out
from sidrec.models.tiger import Tiger, TigerConfig
from sidrec.tokenizers import DIGER, DIGERConfig, load_tokenizer
from sidrec.training import loop
from sidrec.training.config import ScheduleConfig, TrainConfig
from sidrec.training.metrics_log import read_jsonl
from sidrec.training.schedules import joint_losses, semantic_ids_for, train_joint

K, N, D = 8, 24, 10


def setup(**tok_overrides) -> tuple[DIGER, Tiger, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(N, D, generator=gen)
    cfg = DIGERConfig(num_levels=2, codebook_size=K, latent_dim=4, hidden_dims=[16], epochs=3, **tok_overrides)
    tok = DIGER(cfg, input_dim=D).fit(emb, seed=0, device="cpu", progress=False)
    model = Tiger(TigerConfig(level_sizes=[K, K, K], d_model=16, num_heads=2, d_kv=8, d_ff=32,
                              num_encoder_layers=1, num_decoder_layers=1, user_buckets=0, max_history=4))
    return tok, model, emb, semantic_ids_for(tok, emb, model)


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    history = torch.randint(0, N, (6, 4), generator=gen)
    history[:, 0] = -1  # padding
    return history, torch.zeros(6, dtype=torch.long), torch.randint(0, N, (6,), generator=gen)


def rec_grad(tok: DIGER, model: Tiger, emb: torch.Tensor, sids: torch.Tensor) -> torch.Tensor | None:
    tok.train()
    model.train()
    history, users, target = batch()
    torch.manual_seed(0)
    out = joint_losses(model, tok, emb, sids, history, users, target,
                       ScheduleConfig(name="joint", soft_codes=True), aligned=True)
    (grad,) = torch.autograd.grad(out["rec"], tok.quantizer.codebooks, allow_unused=True)
    return grad


def test_recommendation_loss_reaches_every_level_of_the_diger_codebooks():
    grad = rec_grad(*setup(decay="none"))
    per_codeword = grad.abs().sum(-1)  # (L, K)
    # L_REC of the real recommender, through onehot @ token rows and y_soft, moves codewords of every level,
    # including ones no item of the batch chose.
    assert (per_codeword > 0).all(), per_codeword


def test_naive_straight_through_gives_the_codebooks_no_recommendation_gradient():
    assert rec_grad(*setup(gumbel=False, decay="none")) is None


def test_joint_schedule_trains_diger_sdud_end_to_end(tiny_args):
    run, args = tiny_args
    args = [a for a in args if not a.startswith(("tokenizer.params", "train.epochs"))] + [
        "tokenizer.name=diger",
        "tokenizer.params={num_levels: 2, codebook_size: 8, epochs: 3, hidden_dims: [16], latent_dim: 8, "
        "decay: sdud}",
        "schedule.name=joint", "schedule.soft_codes=true", "schedule.finetune_epochs=1", "train.epochs=2",
    ]
    assert main(["run", "configs/ml-100k-demo.yaml", *args, "--quiet"]) == 0
    log = [r for r in read_jsonl(run / "recommender" / "metrics.jsonl") if r["kind"] == "epoch"]
    assert [r["phase"] for r in log] == ["joint", "recommender"]
    assert log[0]["usage"][0] > 0 and "valid.ndcg@10" in log[-1]
    assert len(log[0]["noise.sigma"]) == 2 and "noise.sigma" not in log[1]  # logged after tokenizer epochs
    pretrained = load_tokenizer(run / "tokenizer")
    trained = load_tokenizer(run / "model" / "tokenizer")
    assert isinstance(trained, DIGER) and trained.config.decay == "sdud"
    assert not torch.equal(trained.quantizer.codebooks, pretrained.quantizer.codebooks)
    assert not torch.equal(trained.sigma, pretrained.sigma)  # SDUD's sigma learned from the wrapped L_REC
    # The optimiser gave sigma its own rate (the last group), the other tokenizer parameters schedule.tokenizer_lr,
    # each scaled by the same warm-up and decay as the recommender's (train.lr 0.003 in the demo preset).
    ckpt = run / "recommender" / "checkpoints"
    state = json.loads((ckpt / (ckpt / "LATEST").read_text().strip() / "state.json").read_text())
    groups = state["optimizer"]["param_groups"]
    assert [g["lr"] / groups[0]["lr"] for g in groups[1:]] == pytest.approx([1e-4 / 3e-3, 1e-3 / 3e-3])
    assert "tokenizer.sigma" in load_file(str(ckpt / (ckpt / "LATEST").read_text().strip() / "model.safetensors"))
    assert (run / "metrics.json").exists()


def test_reference_recipe_end_to_end_trains_only_the_codebooks(tiny_args):
    """The presets' recipe (DIGER's reference): FrqUD, hard codes for the recommender, the tokenizer's encoder
    frozen, Sinkhorn codes; the joint epoch moves the codebooks and nothing else of the tokenizer."""
    run, args = tiny_args
    args = [a for a in args if not a.startswith(("tokenizer.params", "train.epochs"))] + [
        "tokenizer.name=diger",
        "tokenizer.params={num_levels: 2, codebook_size: 8, epochs: 3, hidden_dims: [16], latent_dim: 8, "
        "decay: frqud, sk_epsilon: 0.003}",
        "schedule.name=joint", "schedule.frozen_tokenizer_layers=-1", "schedule.finetune_epochs=1", "train.epochs=2",
    ]
    assert main(["run", "configs/ml-100k-demo.yaml", *args, "--quiet"]) == 0
    log = [r for r in read_jsonl(run / "recommender" / "metrics.jsonl") if r["kind"] == "epoch"]
    assert [r["phase"] for r in log] == ["joint", "recommender"] and "noise.changed" in log[0]
    pretrained = load_tokenizer(run / "tokenizer")
    trained = load_tokenizer(run / "model" / "tokenizer")
    assert not torch.equal(trained.quantizer.codebooks, pretrained.quantizer.codebooks)
    for name, value in pretrained.encoder.state_dict().items():
        assert torch.equal(trained.encoder.state_dict()[name], value), name


def test_joint_objective_wraps_the_recommendation_loss_while_sdud_trains():
    tok, model, emb, sids = setup(decay="sdud")
    history, users, target = batch()
    schedule = ScheduleConfig(name="joint", soft_codes=True)
    for training in (True, False):
        tok.train(training)
        out = joint_losses(model, tok, emb, sids, history, users, target, schedule, aligned=True)
        rec = tok.wrap_task_loss(out["rec"]) if training else out["rec"]
        assert ("sq" in out) == training  # a frozen tokenizer's own loss is left out
        assert torch.allclose(out["total"], rec + out["sq"] if training else rec)
        assert not torch.allclose(tok.wrap_task_loss(out["rec"]), out["rec"])


@pytest.mark.parametrize("decay", ["frqud", "sdud"])
def test_interrupted_joint_training_resumes_with_the_same_noise(tmp_path, monkeypatch, decay):
    ds = load_dataset("recbole", write_recbole(tmp_path / "data", num_users=30, num_items=24))
    split = leave_one_out(ds, max_history=4)
    emb = torch.randn(ds.num_items, 6, generator=torch.Generator().manual_seed(0))
    sched = ScheduleConfig(name="joint", soft_codes=True, finetune_epochs=1)
    train = TrainConfig(epochs=3, batch_size=16, warmup_steps=1, eval_beam_size=10, device="cpu", bf16=False)

    def fresh() -> tuple[Tiger, DIGER]:
        cfg = DIGERConfig(num_levels=2, codebook_size=4, latent_dim=4, hidden_dims=[8], epochs=2, batch_size=16,
                          decay=decay)
        tok = DIGER(cfg, input_dim=6).fit(emb, seed=0, device="cpu", progress=False)
        model = Tiger(TigerConfig(level_sizes=[4, 4, 24], max_history=4, d_model=16, num_heads=2, d_kv=8,
                                  d_ff=32, num_encoder_layers=1, num_decoder_layers=1, dropout=0.0,
                                  user_buckets=0), torch.Generator().manual_seed(0))
        return model, tok

    model, tok = fresh()
    train_joint(model, tok, emb, split, train, sched, tmp_path / "a", seed=0, progress=False)
    clock = iter(range(10**6))

    class FakeTime:  # the deadline check reads time.time() once per batch: stop in the middle of epoch 1
        time = staticmethod(lambda: next(clock))
        perf_counter = staticmethod(lambda: 0.0)

    monkeypatch.setattr(loop, "time", FakeTime)  # the one epoch loop reads the clock
    steps_per_epoch = -(-len(split.train.target) // 16)
    model2, tok2 = fresh()
    res = train_joint(model2, tok2, emb, split, train, sched, tmp_path / "b", seed=0, progress=False,
                      deadline=steps_per_epoch + 2)
    assert not res.finished and res.epochs_run == 1
    monkeypatch.undo()
    torch.manual_seed(123)  # a fresh process: the noise must come from the checkpoint, not the global state
    model3, tok3 = fresh()
    assert train_joint(model3, tok3, emb, split, train, sched, tmp_path / "b", seed=0, progress=False).finished
    noise_state = {"frqud": "usage_ema", "sdud": "sigma"}[decay]
    assert not torch.equal(tok.state_dict()[noise_state], fresh()[1].state_dict()[noise_state])
    for a, b in [(model, model3), (tok, tok3)]:
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.allclose(x, y, atol=1e-6), name


@pytest.mark.parametrize("noisy_labels", [False, True])
def test_labels_come_from_the_deterministic_table_unless_noisy_labels(monkeypatch, noisy_labels):
    tok, model, emb, sids = setup(decay="none", noise_scale=50.0)  # noise large enough to change codes
    tok.train()
    history, users, target = batch()
    seen = {}
    rec_loss = model.rec_loss

    def recording(logits, target_sids):
        seen["labels"] = target_sids.clone()
        return rec_loss(logits, target_sids)

    monkeypatch.setattr(model, "rec_loss", recording)
    torch.manual_seed(0)
    sched = ScheduleConfig(name="joint", soft_codes=True, noisy_labels=noisy_labels)
    joint_losses(model, tok, emb, sids, history, users, target, sched, aligned=True)
    # DIGER's reference: the Gumbel noise feeds the soft inputs only; the labels are the per-epoch table's
    assert torch.equal(seen["labels"], sids[target]) != noisy_labels
