"""The one config schema: YAML -> typed dataclasses, ``key.sub=value`` overrides, strict on keys and types.

Every config of sidrec is a dataclass read through ``from_dict``: the run config (``sidrec.config``), its
sections, a tokenizer's ``params`` and a model's ``params`` (each checked against that tokenizer's or model's own
config class). The rules are the same everywhere:

- an unknown key is an error naming it and listing the valid keys;
- a value must fit its annotation (``bool`` is not an ``int``, an ``int`` is accepted for a ``float``, floats
  must be finite, ``Literal`` values are listed); nested dataclasses are built from mappings;
- a ``ValueError`` of a class's own ``__post_init__`` (``"<field>: <problem>"``) is re-raised with the key of its
  section in front, unless it already names its full key.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Train:
    ...     epochs: int = 1
    ...     lr: float = 1e-3
    >>> from_dict(Train, {"lr": 1}, "train")
    Train(epochs=1, lr=1.0)
    >>> from_dict(Train, {"epoch": 3}, "train")
    Traceback (most recent call last):
    ...
    sidrec.schema.ConfigError: train.epoch: unknown parameter (valid: epochs, lr)
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message names the key."""


class _StrictSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also refuses duplicate keys (plain YAML silently keeps the last one) and aliases
    (``*name``: a few nested aliases expand to billions of values once the config is hashed or dumped)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in configs", mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, where: str) -> Any:
    """Parse YAML strictly; errors name ``where`` and the line."""
    try:
        return yaml.load(text, Loader=_StrictSafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{where}{line}: invalid YAML: {e.problem or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: invalid YAML: {e}") from None


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file (an empty file is ``{}``); errors name the file."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: config file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    data = parse_yaml(text, str(p)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a nested dict, in place.

    Example:
        >>> apply_overrides({"train": {"epochs": 1}}, ["train.epochs=3", "model.params.d_model=64"])
        {'train': {'epochs': 3}, 'model': {'params': {'d_model': 64}}}
    """
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r}: expected key=value")
        key, raw = ov.split("=", 1)
        value = parse_yaml(raw, f"override {key}") if raw != "" else ""
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {p} is not a section")
        node[parts[-1]] = value
    return data


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    return getattr(tp, "__name__", str(tp))


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against the annotation ``tp`` (int -> float, mappings -> dataclasses); errors name ``key``."""
    origin = typing.get_origin(tp)
    wrong = ConfigError(f"{key}: expected {_type_name(tp)}, got {_show(value)}")
    if tp is Any:
        return value
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise wrong
        return value
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(tp)):
            return None
        if len(options) == 1 and dataclasses.is_dataclass(options[0]):  # its own error names the nested key
            return _coerce(value, options[0], key)
        for option in options:
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise wrong
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise wrong
        (item_tp,) = typing.get_args(tp) or (Any,)
        try:
            return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        except ConfigError:
            raise wrong from None
    if origin is dict:
        if not isinstance(value, dict):
            raise wrong
        return dict(value)
    # bool is a subclass of int in Python: a YAML `true` must not pass as a count, nor 1 as a flag.
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        return value
    if (tp is int and isinstance(value, bool)) or not isinstance(value, origin or tp):
        raise wrong
    return value


def from_dict(cls: type, data: Any, key: str = "") -> Any:
    """Build the dataclass ``cls`` from the mapping ``data`` (the config section at ``key``), strictly.

    Raises:
        ConfigError: an unknown key (the valid ones listed), a value of the wrong type, or a value its
            ``__post_init__`` refuses, each naming the full key.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{key or 'config'}: expected a mapping, got {type(data).__name__}")
    prefix = f"{key}." if key else ""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]!s}: unknown parameter (valid: {', '.join(names)})")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as e:  # a required field left out
        raise ConfigError(f"{key or 'config'}: {e}") from None
    except ValueError as e:
        message = str(e)
        named = not key or message.startswith((f"{key}.", f"{key}:"))
        raise ConfigError(message if named else f"{prefix}{message}") from None
