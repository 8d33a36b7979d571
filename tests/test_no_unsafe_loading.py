"""Static scan of sidrec/: nothing can deserialise code. No pickle/marshal/shelve, no eval/exec, no
``torch.load`` without ``weights_only=True``, no ``np.load(allow_pickle=True)``, no ``yaml.load`` with an
unsafe loader (``yaml.unsafe_load``/``full_load`` included)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sidrec"
BANNED_MODULES = {"pickle", "cPickle", "dill", "marshal", "shelve", "joblib", "cloudpickle"}


def _call_name(node: ast.Call) -> str:
    """Dotted name of the called function: ``torch.load``, ``np.load``, ``eval``..."""
    parts, f = [], node.func
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    parts.append(f.id if isinstance(f, ast.Name) else "<expr>")  # model.to(x).eval() is "<expr>.to.eval"
    return ".".join(reversed(parts))


def _keyword(node: ast.Call, name: str):
    for kw in node.keywords:
        if kw.arg == name:
            return kw.value
    return None


def unsafe_uses(source: str, filename: str) -> list[str]:
    """Every unsafe-loading construct in ``source``, as ``file:line: what``."""
    problems = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            problems += [
                f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in BANNED_MODULES
            ]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in BANNED_MODULES:
            problems.append(f"{where}: from {node.module} import")
        elif isinstance(node, ast.Call):
            name = _call_name(node)
            last = name.rsplit(".", 1)[-1]
            if name in ("eval", "exec", "compile", "__import__"):
                problems.append(f"{where}: {name}()")
            elif name.endswith("torch.load"):
                wo = _keyword(node, "weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
            if last == "load" and name.split(".")[0] in ("np", "numpy"):
                ap = _keyword(node, "allow_pickle")
                if ap is None or not (isinstance(ap, ast.Constant) and ap.value is False):
                    problems.append(f"{where}: {name} without allow_pickle=False")
            if name in ("yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "yaml.unsafe_load_all"):
                problems.append(f"{where}: {name}")
            if name == "yaml.load":
                loader = _keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
                loader_name = loader.id if isinstance(loader, ast.Name) else getattr(loader, "attr", "")
                if "Safe" not in loader_name:
                    problems.append(f"{where}: yaml.load with loader {loader_name or 'default'}")
    return problems


def test_package_has_no_unsafe_loading():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    problems = [
        p for f in files for p in unsafe_uses(f.read_text(encoding="utf-8"), str(f.relative_to(PACKAGE)))
    ]
    assert problems == []


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle",
        "from marshal import loads",
        "import shelve",
        "eval('1')",
        "exec('x = 1')",
        "import torch\ntorch.load('m.pt')",
        "import torch\ntorch.load('m.pt', weights_only=False)",
        "import numpy as np\nnp.load('x.npy')",
        "import numpy as np\nnp.load('x.npy', allow_pickle=True)",
        "import yaml\nyaml.load(s)",
        "import yaml\nyaml.load(s, Loader=yaml.Loader)",
        "import yaml\nyaml.unsafe_load(s)",
    ],
)
def test_scanner_catches_each_pattern(snippet):
    assert unsafe_uses(snippet, "x.py")


@pytest.mark.parametrize(
    "snippet",
    [
        "import torch\ntorch.load('m.pt', weights_only=True)",
        "import numpy as np\nnp.load('x.npy', allow_pickle=False)",
        "import yaml\nyaml.safe_load(s)",
        "import yaml\nyaml.load(s, Loader=_StrictSafeLoader)",
        "import ast\nast.literal_eval(s)",
        "model.eval()",
        "model.to(device).eval()",
    ],
)
def test_scanner_allows_safe_forms(snippet):
    assert unsafe_uses(snippet, "x.py") == []
