"""Doctest collection of sidrec/: a module that imports an optional extra at the top is skipped without it.

At the repository root, outside the package, so that it does not ship in the wheel. The tests import their helpers
with ``from conftest import ...``: pytest loads this file before tests/conftest.py, which therefore is the
``conftest`` module they get.
"""

import importlib.util

# module -> the extra's package it imports at module level (the others import theirs inside functions)
_OPTIONAL = {"sidrec/serve/app.py": "fastapi"}

collect_ignore = [path for path, package in _OPTIONAL.items() if importlib.util.find_spec(package) is None]
