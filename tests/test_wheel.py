"""What a pip user gets: a wheel built from this tree, installed in a fresh venv, run outside the repository.

The venv reaches the dependencies (torch, ...) through a .pth line to this interpreter's site-packages, so nothing
is downloaded; sidrec itself comes from the wheel only (the test checks which file it imports).
"""

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import tiny_overrides

REPO = Path(__file__).parents[1]


def _install_wheel(tmp: Path) -> Path:
    """Build the wheel from a copy of what it is built from, install it without dependencies in a new venv;
    returns the venv's bin/ folder."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "sidrec", src / "sidrec", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist"),
                    str(src)], check=True, cwd=tmp)
    wheel = next((tmp / "dist").glob("sidrec-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "sidrec/presets/ml-100k-demo.yaml" in names and "sidrec/conftest.py" not in names
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    deps = [*site.getsitepackages(), site.getusersitepackages()]
    (Path(purelib) / "_sidrec_test_deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run([*pip, "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, cwd=tmp)
    return venv / "bin"


def test_installed_wheel_lists_the_presets_and_runs_one_by_name(tmp_path):
    bin_dir = _install_wheel(tmp_path)
    work = tmp_path / "elsewhere"  # no configs/ and no sidrec/ here: only the installed package
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def sidrec(*args: str) -> str:
        out = subprocess.run([bin_dir / "sidrec", *args], cwd=work, env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout

    where = subprocess.run([bin_dir / "python", "-c", "import sidrec; print(sidrec.__file__)"], cwd=work, env=env,
                           check=True, capture_output=True, text=True).stdout
    assert where.startswith(str(tmp_path / "venv"))
    listing = sidrec("presets")
    for line in ("ml-100k-demo ", "beauty ", "office "):
        assert any(row.startswith(line) for row in listing.splitlines()), line
    assert "A few-minute demo on MovieLens-100K" in listing
    assert sidrec("presets", "ml-100k-demo").startswith("# A few-minute demo")
    # The demo preset by name, on a tiny dataset (the full demo takes minutes): every stage from the wheel.
    run, overrides = tiny_overrides(work)
    out = sidrec("run", "ml-100k-demo", *overrides, "--quiet")
    assert "TIGER (rqvae)" in out and (run / "metrics.json").exists()
    assert "data:\n  name: toy" in (run / "config.yaml").read_text()
