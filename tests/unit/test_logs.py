"""Log lines are JSON objects that keep what the caller passed in ``extra=``."""

from __future__ import annotations

import logging

import orjson

from metering.logs import formatter


def line(record: logging.LogRecord) -> dict[str, object]:
    parsed: dict[str, object] = orjson.loads(formatter().format(record))
    return parsed


def test_fields_of_a_line_and_the_callers_extra_fields():
    logger = logging.getLogger("pvgate.test")
    record = logger.makeRecord(
        "pvgate.test", logging.WARNING, __file__, 1, "debit for %s failed", ("e1",), None,
        extra={"enterprise": "e1", "request_id": "r-1", "worker": 3},
    )  # fmt: skip
    entry = line(record)
    assert entry["level"] == "warning"
    assert entry["logger"] == "pvgate.test"
    assert entry["msg"] == "debit for e1 failed"
    assert (entry["enterprise"], entry["request_id"], entry["worker"]) == ("e1", "r-1", 3)
    assert isinstance(entry["pid"], int)
    assert str(entry["ts"]).endswith("+00:00")


def test_a_traceback_is_one_field_and_the_line_stays_one_line():
    try:
        raise ValueError("bad")
    except ValueError:
        import sys

        record = logging.getLogger("t").makeRecord(
            "t", logging.ERROR, __file__, 1, "boom", (), sys.exc_info()
        )
    text = formatter().format(record)
    assert "\n" not in text
    assert "ValueError: bad" in orjson.loads(text)["exc_info"]
    assert '"level":"error"' in text  # compact, as the tests that scan logs expect
