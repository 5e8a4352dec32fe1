"""``examples/gateway.toml`` documents every gateway setting, each with its default."""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from pathlib import Path
from typing import Any

from gateway.settings import GatewaySettings, SiteEntry, load_settings

EXAMPLE = Path(__file__).parents[2] / "examples" / "gateway.toml"


def fields(cls: type, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every leaf setting of a settings class, by its path, with its default."""
    found: dict[tuple[str, ...], Any] = {}
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            found.update(fields(hint, (*path, field.name)))
        elif hint != tuple[SiteEntry, ...]:
            found[(*path, field.name)] = field.default
    return found


def test_every_setting_is_in_the_example_with_its_default():
    example = tomllib.loads(EXAMPLE.read_text())
    for path, default in fields(GatewaySettings).items():
        value: Any = example
        for part in path:
            assert part in value, f"{'.'.join(path)} is not documented in {EXAMPLE.name}"
            value = value[part]
        expected = list(default) if isinstance(default, tuple) else default
        assert value == expected, f"{'.'.join(path)}: example {value!r}, default {default!r}"


def test_the_example_loads():
    settings = load_settings(EXAMPLE, env={})
    assert settings.sites()[0].host == "landing.example.com"
