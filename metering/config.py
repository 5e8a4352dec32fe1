"""Settings: a TOML file, then ``PVGATE_*`` environment variables, into frozen dataclasses.

One mechanism for every component: a settings class is a frozen dataclass whose fields
are ``str``, ``int``, ``float``, ``bool``, a ``Literal`` of strings, ``tuple[str, ...]``,
a nested settings dataclass (a TOML table) or ``tuple[Dataclass, ...]`` (an array of
tables).  Field ``a`` of table ``[b]`` is overridden by ``PVGATE_B_A``.  A missing,
unknown or ill-typed value raises `ConfigError` naming the key and where it came from.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T")
ENV_PREFIX = "PVGATE"


class ConfigError(ValueError):
    """A setting is missing, unknown or invalid; the message names it."""


def load_file(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path}: not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc


def build(cls: type[T], data: Mapping[str, Any], env: Mapping[str, str]) -> T:
    """An instance of the settings class ``cls`` from TOML ``data`` and ``env``."""
    return _build(cls, data, env, ())


def _build(cls: type[T], data: Any, env: Mapping[str, str], path: tuple[str, ...]) -> T:
    where = ".".join(path) or "(top level)"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown setting {'.'.join((*path, unknown[0]))!r}")
    values: dict[str, Any] = {}
    for name, field in fields.items():
        key = (*path, name)
        env_name = "_".join((ENV_PREFIX, *key)).upper()
        hint = hints[name]
        if _is_dataclass(hint):
            values[name] = _build(hint, data.get(name, {}), env, key)
        elif env_name in env:
            values[name] = _coerce(hint, env[env_name], f"{'.'.join(key)} (from {env_name})", env)
        elif name in data:
            values[name] = _coerce(hint, data[name], ".".join(key), env)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing setting {'.'.join(key)!r} (or {env_name})")
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _is_dataclass(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _coerce(hint: Any, value: Any, key: str, env: Mapping[str, str]) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    from_env = isinstance(value, str) and "(from " in key
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin is tuple:
        items = [v.strip() for v in value.split(",") if v.strip()] if from_env else value
        if not isinstance(items, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if _is_dataclass(args[0]):
            return tuple(_build(args[0], item, {}, (key, str(i))) for i, item in enumerate(items))
        return tuple(_coerce(args[0], item, key, env) for item in items)
    if origin in (types.UnionType, typing.Union):
        raise ConfigError(f"{key}: unsupported optional setting type")
    return _scalar(hint, value, key, from_env)


_BOOLS = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}


def _scalar(hint: Any, value: Any, key: str, from_env: bool) -> Any:
    try:
        if from_env:  # environment values are strings, parsed as the field's type
            return _BOOLS[value.lower()] if hint is bool else hint(value)
        # TOML values are typed already; only an int may stand for a float.
        if hint is float and type(value) is int:
            return float(value)
        if type(value) is hint:
            return value
    except (KeyError, ValueError):
        pass
    raise ConfigError(f"{key}: expected {getattr(hint, '__name__', hint)}, got {value!r}")
