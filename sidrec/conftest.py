"""Doctest collection of this package: a module that imports an optional extra at the top is skipped without it.

Here rather than at the repository root, where a second ``conftest`` module would shadow the tests' one.
"""

import importlib.util

# module -> the extra's package it imports at module level (the others import theirs inside functions)
_OPTIONAL = {"serve/app.py": "fastapi"}

collect_ignore = [path for path, package in _OPTIONAL.items() if importlib.util.find_spec(package) is None]
