import json

import torch
from safetensors.torch import load_file

from sidrec.cli import main
from sidrec.config import ScheduleConfig
from sidrec.models.tiger import Tiger, TigerConfig
from sidrec.tokenizers import DIGER, DIGERConfig, load_tokenizer
from sidrec.training.schedules import joint_losses, semantic_ids_for

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
    log = [json.loads(line) for line in (run / "recommender" / "train_log.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in log] == ["joint", "recommender"]
    assert log[0]["usage"][0] > 0 and "valid.ndcg@10" in log[-1]
    assert len(log[0]["noise.sigma"]) == 2 and "noise.sigma" not in log[1]  # logged after tokenizer epochs
    pretrained = load_tokenizer(run / "tokenizer" / "pretrained")
    trained = load_tokenizer(run / "tokenizer")
    assert isinstance(trained, DIGER) and trained.config.decay == "sdud"
    assert not torch.equal(trained.quantizer.codebooks, pretrained.quantizer.codebooks)
    assert not torch.equal(trained.sigma, pretrained.sigma)  # SDUD's sigma learned from the wrapped L_REC
    # The optimiser gave sigma its own rate (the last group), the other tokenizer parameters schedule.tokenizer_lr.
    ckpt = run / "recommender" / "checkpoints"
    state = json.loads((ckpt / (ckpt / "LATEST").read_text().strip() / "state.json").read_text())
    groups = state["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups[1:]] == [1e-4, 1e-3]
    assert "tokenizer.sigma" in load_file(str(ckpt / (ckpt / "LATEST").read_text().strip() / "model.safetensors"))
    assert (run / "metrics.json").exists()


def test_joint_objective_wraps_the_recommendation_loss_while_sdud_trains():
    tok, model, emb, sids = setup(decay="sdud")
    history, users, target = batch()
    schedule = ScheduleConfig(name="joint", soft_codes=True)
    for training in (True, False):
        tok.train(training)
        out = joint_losses(model, tok, emb, sids, history, users, target, schedule, aligned=True)
        rec = tok.wrap_task_loss(out["rec"]) if training else out["rec"]
        assert torch.allclose(out["total"], rec + out["sq"])
        assert not torch.allclose(tok.wrap_task_loss(out["rec"]), out["rec"])
