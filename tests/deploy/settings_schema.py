"""JSON schemas of pvgate's settings, derived from the settings dataclasses.

The chart's ``values.schema.json`` describes ``gateway.config`` and ``billing.config`` with
exactly these schemas, so that ``helm install`` refuses a misspelt or ill-typed setting
the way ``pvgate`` itself would (`metering.config`).  The keys the chart sets itself
(`CHART_SET`) are left out: the schema refuses them in ``config``.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal

from billing.settings import BillingSettings
from gateway.settings import GatewaySettings

# Settings the chart renders from its own values (ports, workers, how to reach Redis) or
# takes from a Secret (database_url, Redis passwords): not for gateway.config /
# billing.config.  (Names a settings class does not have are simply not there.)
REDIS_SET = frozenset(
    {"url", "cluster_nodes", "sentinels", "sentinel_master", "sentinel_password", "username",
     "password", "tls", "tls_ca_file", "tls_cert_file", "tls_key_file"}
)  # fmt: skip
CHART_SET: dict[type, dict[str, Any]] = {
    GatewaySettings: {"listen": None, "metrics_listen": None, "workers": None, "redis": REDIS_SET},
    BillingSettings: {"listen": None, "metrics_listen": None, "database_url": None,
                      "redis": REDIS_SET},
}  # fmt: skip


def type_schema(hint: Any) -> dict[str, Any]:
    """The JSON schema of one settings field type (see `metering.config` for the types)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return {"type": "string", "enum": list(args)}
    if origin is tuple:
        return {"type": "array", "items": type_schema(args[0])}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return settings_schema(hint)
    scalar = {str: "string", int: "integer", float: "number", bool: "boolean"}
    if hint not in scalar:
        raise TypeError(f"no schema for setting type {hint!r}")
    return {"type": scalar[hint]}


def settings_schema(cls: type, leave_out: Any = None) -> dict[str, Any]:
    """An object schema for the settings dataclass ``cls``; ``leave_out`` maps field names
    to None (the whole field) or a set of the names inside that table."""
    leave_out = leave_out or {}
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for field in dataclasses.fields(cls):
        if field.name in leave_out and leave_out[field.name] is None:
            continue
        inner = leave_out.get(field.name)
        hint = hints[field.name]
        if inner is not None:
            properties[field.name] = settings_schema(hint, dict.fromkeys(inner))
        else:
            properties[field.name] = type_schema(hint)
        no_default = field.default is dataclasses.MISSING
        if no_default and field.default_factory is dataclasses.MISSING:
            required.append(field.name)
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
    }
    if required:
        schema["required"] = required
    return schema


def config_schemas() -> dict[str, dict[str, Any]]:
    """``{"gateway": …, "billing": …}``: the schemas of gateway.config and billing.config."""
    return {
        "gateway": settings_schema(GatewaySettings, CHART_SET[GatewaySettings]),
        "billing": settings_schema(BillingSettings, CHART_SET[BillingSettings]),
    }


def strip_descriptions(schema: Any) -> Any:
    """The schema without its human-only keys (description, title)."""
    if isinstance(schema, dict):
        return {
            k: strip_descriptions(v) for k, v in schema.items() if k not in ("description", "title")
        }
    if isinstance(schema, list):
        return [strip_descriptions(v) for v in schema]
    return schema
