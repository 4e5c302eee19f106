"""Strict typed config: one frozen dataclass per params.yaml section.

An unknown key, a missing required key or a value of the wrong type raises ConfigError naming
the key (`prepare.size`) and what was expected. Overrides come as `section.key=value` strings,
the value parsed as YAML (`--set prepare.size=[96,128]`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pipeline.errors import ConfigError

T = TypeVar("T")


def load_params(path: str | Path = "params.yaml", overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read params.yaml and apply `section.key=value` overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file {path} does not exist; pass --params PATH")
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"params file {path} is not valid YAML: {e}") from None
    if not isinstance(params, dict):
        raise ConfigError(f"params file {path} must be a mapping of sections")
    return apply_overrides(params, overrides)


def apply_overrides(params: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of `params` with each `a.b.c=value` set (value parsed as YAML)."""
    import copy

    out = copy.deepcopy(params)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {e}") from None
        node = out
        for i, k in enumerate(keys[:-1]):
            nxt = node.get(k)
            if not isinstance(nxt, dict):
                if nxt is None and k not in node:
                    raise ConfigError(
                        f"override {item!r}: no section {'.'.join(keys[: i + 1])!r} in params"
                    )
                raise ConfigError(
                    f"override {item!r}: {'.'.join(keys[: i + 1])!r} is not a section"
                )
            node = nxt
        node[keys[-1]] = value
    return out


def section(params: dict[str, Any], name: str, cls: type[T]) -> T:
    """Build the dataclass `cls` from `params[name]`, strictly."""
    if name not in params:
        raise ConfigError(
            f"params has no section {name!r}; add it (see params.yaml in the repository)"
        )
    return build(cls, params[name], name)


def build(cls: type[T], data: Any, where: str) -> T:
    """Strictly convert a mapping to the dataclass `cls`; `where` names the key in errors."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        key = f"{where}.{name}"
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key} is required")
            continue
        kwargs[name] = _convert(hints[name], data[name], key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, key)
            except ConfigError as e:
                # "key: why" -> "why"; a nested key (key[0], key.x) is kept so it still points there.
                why = str(e).removeprefix(f"{key}: ")
                errors.append(f"{_name(a)}: {why}")
        raise ConfigError(f"{key}: {value!r} matches none of {_name(tp)}: {'; '.join(errors)}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list ({_name(tp)}), got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} items ({_name(tp)}), got {value!r}")
            return tuple(
                _convert(a, v, f"{key}[{i}]")
                for i, (a, v) in enumerate(zip(args, value, strict=True))
            )
        inner = args[0] if args else Any
        items = [_convert(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        vt = args[1] if args else Any
        return {str(k): _convert(vt, v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{key}: expected null, got {value!r}")
        return None
    raise ConfigError(f"{key}: unsupported config type {_name(tp)}")


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass → plain dict (for checkpoints' "config" and provenance)."""
    return dataclasses.asdict(cfg)


def describe(cls: type) -> str:
    """One line per key with its type, default and the field's `help` metadata (for --help)."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "(required)"
        doc = f.metadata.get("help", "")
        lines.append(
            f"  {f.name} ({_name(hints[f.name])}, default {default}){': ' + doc if doc else ''}"
        )
    return "\n".join(lines)
