"""Structured logs: one JSON object a line on stderr, for every pvgate process.

python-json-logger does the formatting, so that what a call passes in ``extra=`` — a
request id, an enterprise, a site — stays in the line as fields of its own::

    {"ts": "2026-12-01T08:00:00.123456+00:00", "level": "warning", "logger": "pvgate.x",
     "pid": 4242, "msg": "…", "enterprise": "e1"}

Lines are compact (orjson), levels lowercase, tracebacks in ``exc_info``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
from pythonjsonlogger.json import JsonFormatter

_FIELDS = "{levelname}{name}{process}{message}"
_RENAMED = {"levelname": "level", "name": "logger", "process": "pid", "message": "msg"}


def _dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


class _Formatter(JsonFormatter):
    def process_log_record(self, log_record: dict[str, Any]) -> dict[str, Any]:
        log_record["level"] = str(log_record.get("level", "")).lower()
        return log_record


def formatter() -> logging.Formatter:
    return _Formatter(
        _FIELDS, style="{", rename_fields=_RENAMED, timestamp="ts", json_serializer=_dumps
    )


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
