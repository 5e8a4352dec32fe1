"""``examples/gateway.toml`` and ``examples/billing.toml`` document every setting of
the gateway and of billing, each with its default."""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from pathlib import Path
from typing import Any

import pytest

from billing.settings import BillingSettings, load_billing_settings
from gateway.settings import GatewaySettings, SiteEntry, load_settings

EXAMPLES = Path(__file__).parents[2] / "examples"
EXAMPLE = EXAMPLES / "gateway.toml"


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


@pytest.mark.parametrize(
    ("name", "settings"), [("gateway.toml", GatewaySettings), ("billing.toml", BillingSettings)]
)
def test_every_setting_is_in_the_example_with_its_default(name: str, settings: type):
    example = tomllib.loads((EXAMPLES / name).read_text())
    for path, default in fields(settings).items():
        value: Any = example
        for part in path:
            assert part in value, f"{'.'.join(path)} is not documented in {name}"
            value = value[part]
        expected = list(default) if isinstance(default, tuple) else default
        assert value == expected, f"{'.'.join(path)}: example {value!r}, default {default!r}"


def test_the_example_loads():
    settings = load_settings(EXAMPLE, env={})
    assert settings.sites()[0].host == "landing.example.com"


def test_the_billing_example_loads():
    settings = load_billing_settings(EXAMPLES / "billing.toml", env={})
    assert settings == BillingSettings()
