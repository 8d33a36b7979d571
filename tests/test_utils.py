"""Atomic writes: a writer killed mid-write leaves a temp file that later writes remove, never a live one's."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from sidrec.utils import atomic_write, atomic_write_text, remove_stale_temps

REPO = Path(__file__).resolve().parents[1]
WRITER = """
import sys
from pathlib import Path
from sidrec.utils import atomic_write

def write(p):
    p.write_text("from the child")
    sys.stdin.readline()  # hold the temp file open until the parent says so

atomic_write(Path(sys.argv[1]), write)
"""


def _child(code: str, target: Path, kill_at: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("SIDREC_TEST_KILL_AT", None)
    if kill_at:
        env["SIDREC_TEST_KILL_AT"] = kill_at
    return subprocess.Popen([sys.executable, "-c", code, str(target)], env=env, stdin=subprocess.PIPE, text=True)


def _temps(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp"))


def test_temp_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")
    proc = _child("import sys; from sidrec.utils import atomic_write_text; atomic_write_text(sys.argv[1], 'new')",
                  target, kill_at="atomic_write@1")  # SIGKILLed after writing its temp, before the rename
    assert proc.wait(timeout=60) == -signal.SIGKILL
    (left,) = _temps(tmp_path)
    assert left.name.startswith(".state.json.") and f".{proc.pid}." in left.name
    assert target.read_text() == "old"
    atomic_write_text(tmp_path / "other.json", "x")  # another target's write leaves it alone
    assert _temps(tmp_path) == [left]
    atomic_write_text(target, "next")
    assert _temps(tmp_path) == [] and target.read_text() == "next"


def test_temp_of_a_live_writer_is_never_removed(tmp_path):
    target = tmp_path / "model.safetensors"
    proc = _child(WRITER, target)
    deadline = time.monotonic() + 60
    while not _temps(tmp_path):  # the child is inside write(), its temp file exists
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    atomic_write(target, lambda p: p.write_text("from the parent"))
    assert remove_stale_temps(tmp_path, recursive=True) == []
    assert len(_temps(tmp_path)) == 1
    proc.communicate("go\n", timeout=60)
    assert proc.returncode == 0 and target.read_text() == "from the child" and _temps(tmp_path) == []


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid no longer names a process
    return proc.pid


def test_sweep_removes_only_temps_of_dead_writers_on_this_host(tmp_path):
    host, dead = socket.gethostname().replace(".", "_"), _dead_pid()
    sub = tmp_path / "best" / "tokenizer"
    sub.mkdir(parents=True)
    stale = sub / f".tokenizer.json.{host}.{dead}.abc123.tmp"
    alive = sub / f".tokenizer.json.{host}.{os.getpid()}.def456.tmp"
    remote = sub / f".tokenizer.json.otherhost.{dead}.ghi789.tmp"  # its writer's liveness cannot be checked here
    unrelated = sub / ".notes.tmp"
    for path in (stale, alive, remote, unrelated):
        path.write_text("partial")
    assert remove_stale_temps(tmp_path, recursive=True) == [stale]
    assert _temps(sub) == sorted([alive, remote, unrelated])


def test_adamw_is_fused_on_cpu_and_updates_as_the_per_parameter_loop():
    import torch

    from sidrec.utils import adamw

    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    b = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    b.load_state_dict(a.state_dict())
    init = a[0].weight.detach().clone()
    groups = [{"params": a[0].parameters()}, {"params": a[2].parameters(), "lr": 3e-3, "weight_decay": 0.0}]
    fast = adamw(groups, lr=1e-2, weight_decay=0.1)  # generators in groups are taken whole
    slow = torch.optim.AdamW([{"params": b[0].parameters()},
                              {"params": b[2].parameters(), "lr": 3e-3, "weight_decay": 0.0}],
                             lr=1e-2, weight_decay=0.1, foreach=False)
    assert fast.defaults["fused"] and [len(g["params"]) for g in fast.param_groups] == [2, 2]
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    for _ in range(5):
        for model, opt in ((a, fast), (b, slow)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    assert (a[0].weight - init).abs().max() > 1e-2  # the steps moved the weights: the comparison means something
