import pytest
import torch

from sidrec.models.sasrec import SASRec, SASRecConfig, load_sasrec, save_sasrec
from sidrec.utils import atomic_write_json


def make_model(seed: int = 0, **kw) -> SASRec:
    torch.manual_seed(seed)
    cfg = dict(num_items=20, d_model=16, num_layers=2, num_heads=2, max_len=8, dropout=0.0)
    cfg.update(kw)
    return SASRec(SASRecConfig(**cfg)).eval()


def test_causal_later_item_does_not_change_earlier_states():
    model = make_model()
    a = torch.tensor([[-1, -1, 3, 5, 7, 9]])
    b = a.clone()
    b[0, -1] = 12
    ha, hb = model.hidden_states(a), model.hidden_states(b)  # (1, 6, d)
    assert torch.allclose(ha[:, :-1], hb[:, :-1], atol=1e-6)
    assert not torch.allclose(ha[:, -1], hb[:, -1], atol=1e-3)


def test_state_does_not_depend_on_padding_width_and_long_histories_are_truncated():
    model = make_model(max_len=4)
    short = torch.tensor([[2, 4, 6]])
    padded = torch.tensor([[-1, 2, 4, 6]])
    assert torch.allclose(model(short), model(padded), atol=1e-6)
    long = torch.tensor([[1, 9, 8, 3, 2, 4, 6]])  # only the last max_len = 4 items are read
    assert torch.allclose(model(long), model(torch.tensor([[3, 2, 4, 6]])), atol=1e-6)
    assert not torch.allclose(model(long), model(padded), atol=1e-3)


def test_padding_is_never_attended_by_real_positions():
    model = make_model()
    x = torch.tensor([[-1, -1, -1, 4, 5], [-1, -1, -1, 4, 5]])
    # a different padding embedding must not change real positions' states
    with torch.no_grad():
        before = model(x)
        model.item_emb.weight[0].normal_()
        after = model(x)
    assert torch.allclose(before, after, atol=1e-6)


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_fully_padded_rows_give_finite_outputs_and_gradients(loss):
    model = make_model(loss=loss, dropout=0.2).train()
    history = torch.tensor([[-1, -1, -1, -1], [-1, -1, 1, 2], [3, 4, 5, 6]])
    target = torch.tensor([0, 3, 7])
    out = model.loss(history, target, generator=torch.Generator().manual_seed(0))
    out.backward()
    assert torch.isfinite(out)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    assert torch.isfinite(model.scores(history)).all()


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_both_losses_train(loss):
    model = make_model(loss=loss).train()
    history = torch.tensor([[-1, 0, 1], [0, 1, 2], [-1, -1, 5], [4, 5, 6]])
    target = torch.tensor([2, 3, 6, 7])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    first = model.loss(history, target, generator=gen).item()
    for _ in range(30):
        opt.zero_grad()
        model.loss(history, target, generator=gen).backward()
        opt.step()
    assert model.loss(history, target, generator=gen).item() < 0.5 * first
    model.eval()
    assert model.scores(history).argmax(1).tolist() == target.tolist()


def test_scores_are_tied_dot_products_and_item_embeddings_detached():
    model = make_model()
    history = torch.tensor([[-1, 1, 2], [3, 4, 5]])
    emb = model.item_embeddings()
    assert emb.shape == (20, 16) and not emb.requires_grad
    assert torch.equal(emb, model.item_emb.weight[1:])
    assert torch.allclose(model.scores(history), model(history) @ emb.T, atol=1e-6)


def test_save_load_round_trip(tmp_path):
    model = make_model(loss="bce", max_len=6)
    save_sasrec(model, tmp_path / "m")
    loaded = load_sasrec(tmp_path / "m").eval()
    assert loaded.cfg == model.cfg
    history = torch.tensor([[-1, -1, 3, 4], [1, 2, 3, 19]])
    assert torch.equal(model.scores(history), loaded.scores(history))


def test_load_rejects_bad_config_and_missing_weights(tmp_path):
    atomic_write_json(tmp_path / "model.json", {"num_items": 5, "d_modle": 8})
    with pytest.raises(ValueError, match="d_modle"):
        load_sasrec(tmp_path)
    atomic_write_json(tmp_path / "model.json", {"num_items": 5, "d_model": 8, "num_heads": 3})
    with pytest.raises(ValueError, match="model.json"):
        load_sasrec(tmp_path)
    atomic_write_json(tmp_path / "model.json", {"num_items": 5, "d_model": 8})
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_sasrec(tmp_path)


def test_config_validation():
    with pytest.raises(ValueError, match="loss"):
        SASRecConfig(num_items=10, loss="bpr")
    with pytest.raises(ValueError, match="num_heads"):
        SASRecConfig(num_items=10, d_model=10, num_heads=4)
    with pytest.raises(ValueError, match="num_items"):
        SASRecConfig(num_items=1)
