"""Damaged checkpoints are detected and never loaded; a failed write (disk full) keeps the previous one usable."""

import errno
import json

import pytest
import torch

from sidrec.training import checkpoint as ckpt_mod
from sidrec.training.checkpoint import (
    CheckpointError,
    checkpoints,
    latest_checkpoint,
    load_checkpoint,
    resume_checkpoint,
    save_checkpoint,
)


def _model_opt(seed):
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    m(torch.randn(3, 4)).sum().backward()
    opt.step()
    return m, opt


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_bit(path, offset=-20):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _flip_state_number(path):
    # A bit flip that keeps state.json valid JSON: the step counter changes silently unless checksummed.
    state = json.loads(path.read_text())
    state["step"] += 1
    path.write_text(json.dumps(state))


DAMAGE = [
    ("model.safetensors", _truncate),
    ("model.safetensors", _flip_bit),
    ("optim.safetensors", _truncate),
    ("optim.safetensors", _flip_bit),
    ("state.json", _truncate),
    ("state.json", _flip_state_number),
    ("state.json", lambda p: p.unlink()),
    ("model.safetensors", lambda p: p.unlink()),
]


@pytest.mark.parametrize("name, damage", DAMAGE)
def test_damage_is_detected_and_model_untouched(tmp_path, name, damage):
    m, opt = _model_opt(0)
    ckpt = save_checkpoint(tmp_path, 1, m, opt, {"epoch": 1})
    damage(ckpt / name)
    other, other_opt = _model_opt(1)
    before = [p.clone() for p in other.parameters()]
    with pytest.raises(CheckpointError, match=name):
        load_checkpoint(ckpt, other, other_opt)
    assert all(torch.equal(a, b) for a, b in zip(before, other.parameters()))


@pytest.mark.parametrize("name, damage", DAMAGE)
def test_resume_falls_back_to_previous_intact_checkpoint(tmp_path, name, damage):
    m, opt = _model_opt(0)
    save_checkpoint(tmp_path, 1, m, opt, {"epoch": 1})
    expected = [p.clone() for p in m.parameters()]
    m(torch.randn(3, 4)).sum().backward()
    opt.step()
    newest = save_checkpoint(tmp_path, 2, m, opt, {"epoch": 2})
    damage(newest / name)
    messages = []
    other, other_opt = _model_opt(1)
    state = resume_checkpoint(tmp_path, other, other_opt, log=messages.append)
    assert state["epoch"] == 1 and state["step"] == 1
    assert all(torch.equal(a, b) for a, b in zip(expected, other.parameters()))
    assert any("skipping damaged checkpoint" in s and name in s for s in messages)
    assert any("older intact checkpoint" in s for s in messages)


def test_resume_refuses_when_no_checkpoint_is_intact(tmp_path):
    m, opt = _model_opt(0)
    for step in (1, 2):
        _flip_bit(save_checkpoint(tmp_path, step, m, opt, {}) / "model.safetensors")
    with pytest.raises(CheckpointError, match="no intact checkpoint.*--fresh"):
        resume_checkpoint(tmp_path, m, opt, log=lambda _: None)
    assert resume_checkpoint(tmp_path / "none", m, opt) is None


def test_disk_full_keeps_previous_checkpoint_and_latest(tmp_path, monkeypatch):
    m, opt = _model_opt(0)
    first = save_checkpoint(tmp_path, 1, m, opt, {"epoch": 1})
    files_before = {p.name: p.read_bytes() for p in first.iterdir()}
    real_save = ckpt_mod.save_file

    def half_then_enospc(tensors, filename):
        real_save(tensors, filename)
        with open(filename, "r+b") as f:
            f.truncate(f.seek(0, 2) // 2)
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(ckpt_mod, "save_file", half_then_enospc)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path, 2, m, opt, {"epoch": 2})
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path) == first
    assert {p.name: p.read_bytes() for p in first.iterdir()} == files_before
    assert checkpoints(tmp_path) == [first]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", first.name]  # no half-written leftovers
    assert resume_checkpoint(tmp_path, *_model_opt(1))["epoch"] == 1


def test_same_step_saved_twice_never_removes_latest_first(tmp_path, monkeypatch):
    m, opt = _model_opt(0)
    first = save_checkpoint(tmp_path, 5, m, opt, {"epoch": 1})
    seen = []
    real_write = ckpt_mod.atomic_write_text

    def spy(path, text):
        seen.append((text.strip(), first.exists()))  # the old checkpoint still exists when LATEST moves
        return real_write(path, text)

    monkeypatch.setattr(ckpt_mod, "atomic_write_text", spy)
    second = save_checkpoint(tmp_path, 5, m, opt, {"epoch": 2})
    assert second.name == "ckpt-000000005.1" and seen == [(second.name, True)]
    assert latest_checkpoint(tmp_path) == second
    third = save_checkpoint(tmp_path, 6, m, opt, {"epoch": 3})
    assert checkpoints(tmp_path) == [second, third]


def test_stale_staging_folder_is_cleared(tmp_path):
    m, opt = _model_opt(0)
    stale = tmp_path / ".staging-crashed"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    save_checkpoint(tmp_path, 1, m, opt, {})
    assert not stale.exists()
