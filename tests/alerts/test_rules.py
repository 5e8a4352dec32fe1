"""The pure parts: back-off with jitter, Retry-After, the markdown's size, the row classes."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from billing import schema
from billing.alerts import REGISTRY, rows
from billing.alerts.channels.base import MAX_MARKDOWN, Renderer
from billing.alerts.retry import MAX_RETRY_AFTER, next_delay, parse_retry_after

SCHEDULE = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0)


def test_the_schedule_then_give_up():
    delays = [next_delay(SCHEDULE, n, jitter=0.0) for n in range(8)]
    assert delays == [*SCHEDULE, None]


@pytest.mark.parametrize(("rand", "factor"), [(0.0, 0.8), (0.5, 1.0), (1.0, 1.2)])
def test_jitter_spreads_each_delay(rand: float, factor: float):
    assert next_delay(SCHEDULE, 2, jitter=0.2, rand=lambda: rand) == pytest.approx(300 * factor)


def test_retry_after_is_a_floor_of_at_most_a_day():
    assert next_delay(SCHEDULE, 1, jitter=0.0, retry_after=60) == 60
    assert next_delay(SCHEDULE, 2, jitter=0.0, retry_after=60) == 300
    assert next_delay(SCHEDULE, 1, jitter=0.0, retry_after=10**9) == MAX_RETRY_AFTER
    assert next_delay(SCHEDULE, 7, jitter=0.0, retry_after=1) is None


def test_retry_after_seconds_or_http_date():
    now = datetime(2027, 1, 1, 12, 0, tzinfo=UTC)
    assert parse_retry_after("120", now) == 120
    assert parse_retry_after("Fri, 01 Jan 2027 12:02:00 GMT", now) == 120
    assert parse_retry_after("Fri, 01 Jan 2027 11:00:00 GMT", now) == 0
    for nonsense in (None, "", "soon", "-5", "1.5"):
        assert parse_retry_after(nonsense, now) is None


def test_the_markdown_stays_within_4096_bytes_of_utf8():
    occurred = datetime(2027, 1, 1, tzinfo=UTC)
    huge = "页" * 5000  # 15,000 bytes
    event = rows.EventRow(
        id="evt_1",
        enterprise_id="ent-1",
        kind="package_expired",
        subject="b1",
        payload={
            "data": {
                "enterprise_id": "ent-1",
                "bucket": {"id": huge, "remaining_pv": 5},
                "cancelled_pv": 5,
                "expired_at": occurred.isoformat(),
            }
        },
        occurred_at=occurred,
        created_at=occurred,
    )
    text = Renderer(REGISTRY, "Asia/Shanghai").markdown(event)
    assert len(text.encode()) <= MAX_MARKDOWN
    assert text.startswith("### 【pvgate】套餐已到期 · Package expired")
    assert "2027-01-01 08:00:00 (Asia/Shanghai)" in text  # the tail survives the cut
    text.encode().decode("utf-8")  # never cut inside a character


PAIRS = [
    (rows.AlertSettingsRow, schema.alert_settings),
    (rows.ChannelRow, schema.alert_channels),
    (rows.EventRow, schema.alert_events),
    (rows.DeliveryRow, schema.alert_deliveries),
    (rows.AttemptRow, schema.alert_attempts),
]


@pytest.mark.parametrize(("row_class", "table"), PAIRS, ids=[t.name for _, t in PAIRS])
def test_a_row_class_has_its_tables_columns_in_order(row_class: type, table: sa.Table):
    assert [f.name for f in dataclasses.fields(row_class)] == [c.name for c in table.columns]


def test_the_previous_secret_signs_during_its_overlap_only():
    at = datetime(2027, 1, 1, tzinfo=UTC)
    channel = rows.ChannelRow(
        id="ch_1",
        enterprise_id="e",
        type="webhook",
        enabled=True,
        config={"url": "https://example.com"},
        secret="new",
        previous_secret="old",
        previous_secret_until=at + timedelta(hours=1),
        disabled_reason="",
        created_at=at,
        updated_at=at,
    )
    assert channel.secrets_at(at) == ("new", "old")
    assert channel.secrets_at(at + timedelta(hours=1)) == ("new",)
