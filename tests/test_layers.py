"""The package's layers (listed in ``sidrec/__init__.py``): no module imports from a layer above its own, nor from
a sibling of its layer, nor another package's private names. Imports inside functions count too."""

import ast
from pathlib import Path

import sidrec

ROOT = Path(sidrec.__file__).parent
# The unit (first name under sidrec) -> its layer, lowest first; units of one layer must not import each other.
LAYERS = [
    {"utils", "distributed", "rundir", "schema"},
    {"data"},
    {"tokenizers", "models"},
    {"decoding"},
    {"eval"},
    {"training"},
    {"embeddings"},
    {"config"},
    {"pipeline"},
    {"serve"},
    {"report"},
    {"cli", "api"},
    {"__main__"},
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def _unit(module: str) -> str:
    """``sidrec.training.loop`` -> ``training``."""
    return module.split(".")[1]


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported sidrec module, imported names) of every import in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sidrec."):
            out.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.ImportFrom) and node.module == "sidrec":  # from sidrec import distributed
            out += [(node.lineno, f"sidrec.{a.name}", []) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names if a.name.startswith("sidrec.")]
    return out


def problems() -> list[str]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent)
        module = ".".join(rel.with_suffix("").parts)
        if module in ("sidrec.__init__", "sidrec.conftest"):  # the root lazily offers the API; pytest's doctest setup
            continue
        unit = _unit(module)
        assert unit in RANK, f"{rel}: sidrec.{unit} is in no layer of tests/test_layers.py"
        for line, imported, names in _imports(path):
            other = _unit(imported)
            where = f"{rel}:{line}: {unit} imports {imported}"
            if other == unit:
                continue
            if RANK[other] > RANK[unit]:
                found.append(f"{where} (a layer above)")
            elif RANK[other] == RANK[unit]:
                found.append(f"{where} (a sibling in its layer)")
            private = [n for n in names if n.startswith("_")]
            private += [p for p in imported.split(".") if p.startswith("_") and p != "__init__"]
            if private:
                found.append(f"{where}: private {', '.join(private)}")
    return found


def test_no_upward_sibling_or_private_imports():
    assert problems() == []


def test_every_unit_has_a_layer():
    units = {p.name.removesuffix(".py") for p in ROOT.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert units - {"__init__", "conftest"} == set(RANK)


def test_the_walk_sees_function_level_imports(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from sidrec.pipeline import Run\n    from sidrec.data.loaders import _x\n")
    assert _imports(path) == [(2, "sidrec.pipeline", ["Run"]), (3, "sidrec.data.loaders", ["_x"])]
