"""Dataclasses read from YAML mappings: every key and value checked against the fields' type hints.

A field's type is a hint (int, float, bool, str, a Literal of choices, list[...], unions with None) and
its limits sit in the field's metadata (`limited(default, min=0)`). Errors name the source, the dotted
key, what was expected and, for unknown keys and words, the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import operator
import re
import types
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

__all__ = ["ConfigError", "build", "limited"]


class ConfigError(ValueError):
    """A config file, mapping or override that cannot be used; the message names the source and key."""


class _Invalid(Exception):
    """A value that does not fit its field; `type_ok` when the kind was right but a limit failed."""

    def __init__(self, key: str, message: str, type_ok: bool = False) -> None:
        super().__init__(f"{key}: {message}")
        self.type_ok = type_ok


_NUMBER_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_KINDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
_LISTS = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}
_LIMITS = {
    "min": (">=", operator.ge),
    "max": ("<=", operator.le),
    "gt": (">", operator.gt),
    "lt": ("<", operator.lt),
}


def limited(default: Any, **limits: Any) -> Any:
    """A dataclass field with validation limits: min, max (inclusive), gt, lt (exclusive), len (of a list)."""
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=limits)
    return dataclasses.field(default=default, metadata=limits)


def _show(value: Any) -> str:
    """A value as YAML writes it: null, true, false, else its repr."""
    if value is None:
        return "null"
    return ("true" if value else "false") if isinstance(value, bool) else repr(value)


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if m is type(None) else _describe(m) for m in get_args(tp))
    if origin is Literal:  # choices as a user writes them in YAML (true, not True)
        return "one of " + ", ".join(_show(c) if isinstance(c, bool) else str(c) for c in get_args(tp))
    return "a list of " + _LISTS[get_args(tp)[0]] if origin is list else _KINDS[tp]


def _coerce(value: Any, tp: Any, key: str, limits: Mapping[str, Any]) -> Any:
    """Return `value` checked against type `tp` and `limits`, or raise _Invalid."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for member in (m for m in args if m is not type(None)):
            try:
                return _coerce(value, member, key, limits)
            except _Invalid as err:
                errors.append(err)
        raise next(
            (e for e in errors if e.type_ok), _Invalid(key, f"expected {_describe(tp)}, got {_show(value)}")
        )
    if origin is Literal:
        if isinstance(value, bool) and ("on" if value else "off") in args:
            return "on" if value else "off"  # YAML 1.1 reads the bare words on/off as booleans
        if any(value == c and type(value) is type(c) for c in args):
            return value
        words = [c for c in args if isinstance(c, str)]
        close = difflib.get_close_matches(value, words, n=1) if isinstance(value, str) else []
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        type_ok = isinstance(value, str) and len(words) == len(args)
        raise _Invalid(key, f"expected {_describe(tp)}, got {_show(value)}{hint}", type_ok)
    if origin is list:
        length = limits.get("len")
        if length and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value] * length  # one number for a pair: both the same
        if not isinstance(value, (list, tuple)):
            raise _Invalid(key, f"expected {_describe(tp)}, got {_show(value)}")
        if length is not None and len(value) != length:
            raise _Invalid(key, f"expected {length} values, got {len(value)}: {_show(value)}", True)
        if not value:
            raise _Invalid(key, "expected at least one value, got an empty list", True)
        return [_coerce(v, args[0], f"{key}[{i}]", limits) for i, v in enumerate(value)]
    if tp in (bool, str):
        if not isinstance(value, tp):
            quote = f" (quote it: '{value}')" if tp is str and isinstance(value, (int, float, bool)) else ""
            raise _Invalid(key, f"expected {_KINDS[tp]}, got {_show(value)}{quote}")
        return value
    assert tp in (int, float), f"unsupported config field type {tp!r} for {key}"
    # PyYAML reads 1e-4 (no dot) as a string
    number = float(value) if isinstance(value, str) and _NUMBER_RE.match(value.strip()) else value
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
        raise _Invalid(key, f"expected {_KINDS[tp]}, got {_show(value)}")
    if tp is int and not float(number).is_integer():
        raise _Invalid(key, f"expected an integer, got {_show(value)}")
    number = tp(number)
    for name, (sign, holds) in _LIMITS.items():
        if name in limits and not holds(number, limits[name]):
            raise _Invalid(key, f"must be {sign} {limits[name]}, got {_show(number)}", True)
    return number


def _fields(cls: type) -> dict[str, tuple[Any, Mapping[str, Any]]]:
    hints = get_type_hints(cls)
    return {f.name: (hints[f.name], f.metadata) for f in dataclasses.fields(cls)}


def _dotted_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for name, (tp, _) in _fields(cls).items():
        keys += _dotted_keys(tp, f"{prefix}{name}.") if dataclasses.is_dataclass(tp) else [prefix + name]
    return keys


def _unknown_key(root: type, key: str, section: str, valid: Sequence[str], source: str) -> ConfigError:
    leaf, all_keys = key.rsplit(".", 1)[-1], _dotted_keys(root)
    in_section = [f"{section}.{name}" if section else name for name in valid]
    guess = (
        [k for k in all_keys if k.rsplit(".", 1)[-1] == leaf][:1]  # right name, wrong section
        or difflib.get_close_matches(key, in_section, n=1)
        or difflib.get_close_matches(key, all_keys, n=1)
    )
    where = f"valid keys in '{section}'" if section else "valid top-level keys"
    hint = f"did you mean '{guess[0]}'? " if guess else ""
    return ConfigError(f"{source}: unknown key '{key}' ({hint}{where}: {', '.join(valid)})")


def build(root: type, mapping: Any, source: str, retired: Mapping[str, Any] | None = None) -> Any:
    """An instance of dataclass `root` (sections are dataclass fields) from `mapping` over its defaults,
    checking every key and value; a `retired` dotted key is dropped when it holds its one old value."""
    retired = retired or {}

    def section(cls: type, mapping: Any, name: str) -> Any:
        if mapping is None:
            mapping = {}
        if not isinstance(mapping, Mapping):
            where = f"'{name}'" if name else "the top level"
            raise ConfigError(f"{source}: expected a mapping of keys at {where}, got {_show(mapping)}")
        fields, kwargs = _fields(cls), {}
        for field, value in mapping.items():
            key = f"{name}.{field}" if name else str(field)
            if field not in fields:
                if key not in retired:
                    raise _unknown_key(root, key, name, list(fields), source)
                if value != retired[key]:
                    raise ConfigError(
                        f"{source}: '{key}' is retired; it only took {_show(retired[key])}: remove it"
                    )
                continue
            tp, limits = fields[field]
            if dataclasses.is_dataclass(tp):
                kwargs[field] = section(tp, value, key)
                continue
            try:
                kwargs[field] = _coerce(value, tp, key, limits)
            except _Invalid as err:
                raise ConfigError(f"{source}: {err}") from None
        return cls(**kwargs)

    return section(root, mapping, "")
