import pytest
import torch

from sidrec.training.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint


def _model_opt(seed):
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    m(torch.randn(3, 4)).sum().backward()
    opt.step()
    return m, opt


def test_roundtrip_restores_weights_optimizer_and_rng(tmp_path):
    m, opt = _model_opt(0)
    torch.manual_seed(123)
    save_checkpoint(tmp_path, 5, m, opt, {"epoch": 2})
    expected_next = torch.rand(3)
    m2, opt2 = _model_opt(1)
    state = load_checkpoint(latest_checkpoint(tmp_path), m2, opt2)
    assert state["epoch"] == 2 and state["step"] == 5
    for a, b in zip(m.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], opt2.state_dict()["state"][0]["exp_avg"])
    assert torch.equal(torch.rand(3), expected_next)


def test_keeps_only_newest_and_latest_pointer(tmp_path):
    m, opt = _model_opt(0)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, m, opt, {}, keep=2)
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-000000002", "ckpt-000000003"]
    assert latest_checkpoint(tmp_path).name == "ckpt-000000003"


def test_corrupted_checkpoint_is_refused(tmp_path):
    m, opt = _model_opt(0)
    ckpt = save_checkpoint(tmp_path, 1, m, opt, {})
    f = ckpt / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-7])
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(ckpt, m, opt)


def test_no_checkpoint_yet(tmp_path):
    assert latest_checkpoint(tmp_path) is None
