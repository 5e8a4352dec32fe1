"""Retention: the usage stream trimmed up to what every group still needs, dead letters
capped, idempotency records purged after their age; the ledger untouched."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from redis.asyncio import Redis

from billing.consumer import DEAD_LETTER_STREAM, UsageConsumer
from billing.db import Database
from billing.interop.tables import wecom_event_keys, wecom_events
from billing.reconcile import differences
from billing.retention import (
    cap_dead_letters,
    purge_idempotency,
    purge_usage_batches,
    purge_wecom,
    sweep,
    trim_usage,
)
from billing.schema import (
    alert_attempts,
    alert_deliveries,
    alert_events,
    idempotency_records,
    usage,
    usage_batches,
)
from metering import BalanceStore
from metering.keys import USAGE_STREAM
from metering.usage import UsageRecorder
from tests.billing.support import ENT, count, enterprise, paid_order

STREAM = "pvgate:test-retention"
DEFAULTS: dict[str, Any] = {
    "dead_letters_max": 100_000,
    "idempotency_hours": 24.0,
    "usage_batches_days": 7.0,
    "wecom_events_days": 30.0,
}


async def fill(client: Any, n: int, stream: str = STREAM) -> list[str]:
    return [await client.xadd(stream, {"n": str(i)}) for i in range(n)]


async def test_trimmed_up_to_the_oldest_entry_a_group_still_holds_or_has_not_read(client):
    await client.delete(STREAM)
    ids = await fill(client, 10)
    assert await trim_usage(client, STREAM) == 0  # no group reads it: nothing is booked
    await client.xgroup_create(STREAM, "a", id="0")
    await client.xgroup_create(STREAM, "b", id="0")
    assert await trim_usage(client, STREAM) == 0  # neither has read anything

    read_a = await client.xreadgroup("a", "a1", {STREAM: ">"}, count=6)
    await client.xack(STREAM, "a", *[i for i, _ in read_a[0][1][:4]])  # 5th and 6th pending
    read_b = await client.xreadgroup("b", "b1", {STREAM: ">"}, count=8)
    await client.xack(STREAM, "b", *[i for i, _ in read_b[0][1]])  # all 8 done
    assert await trim_usage(client, STREAM) == 4  # a still holds ids[4]
    assert [i for i, _ in await client.xrange(STREAM)] == ids[4:]

    await client.xack(STREAM, "a", ids[4], ids[5])
    assert await trim_usage(client, STREAM) == 2  # a has not read ids[6]
    assert [i for i, _ in await client.xrange(STREAM)] == ids[6:]
    await client.delete(STREAM)


async def test_booked_usage_is_trimmed_and_the_ledger_keeps_it(
    db: Database, store: BalanceStore, redis: Redis, audit
):
    await redis.delete(USAGE_STREAM)
    await enterprise(db, audit)
    state = await paid_order(db, store, audit)
    bucket_id = state.packages[0].id
    recorder = UsageRecorder(redis, "gw-1")
    for _ in range(5):
        debit = await store.debit(ENT, 20)
        for taken_from, n in debit.takes:
            recorder.record(ENT, taken_from, n)
        await recorder.flush()
    consumer = UsageConsumer(db, redis, "c1", block_ms=50)
    await consumer.ensure_group()
    await consumer.drain()
    assert await redis.xlen(USAGE_STREAM) == 5

    swept = await sweep(db, redis, **DEFAULTS)
    assert swept.usage_entries == 5
    assert swept.usage_batches == 0  # booked minutes ago: still de-duplicating
    assert await redis.xlen(USAGE_STREAM) == 0
    found, used = await differences(db, store, [ENT])
    assert found == {}
    assert used[(ENT, bucket_id)] == 100
    assert await count(db, usage) >= 1

    debit = await store.debit(ENT, 7)  # recorded after the sweep: kept until booked
    recorder.record(ENT, bucket_id, debit.granted)
    await recorder.flush()
    assert (await sweep(db, redis, **DEFAULTS)).usage_entries == 0
    assert await redis.xlen(USAGE_STREAM) == 1
    await consumer.drain()
    assert (await differences(db, store, [ENT]))[0] == {}


async def test_dead_letters_keep_about_the_newest(redis: Redis):
    await redis.delete(DEAD_LETTER_STREAM)
    ids = await fill(redis, 2000, DEAD_LETTER_STREAM)
    removed = await cap_dead_letters(redis, 500)
    left = await redis.xlen(DEAD_LETTER_STREAM)
    assert removed == 2000 - left
    assert 500 <= left < 1000  # "~": whole nodes go, never below the cap
    found: Any = await redis.xrevrange(DEAD_LETTER_STREAM, count=500)
    newest = [i for i, _ in found]
    assert newest == ids[::-1][:500]
    await redis.delete(DEAD_LETTER_STREAM)


async def test_the_record_of_booked_entries_goes_after_its_age_the_usage_stays(
    db: Database, store: BalanceStore, redis: Redis, audit
):
    await redis.delete(USAGE_STREAM)
    await enterprise(db, audit)
    state = await paid_order(db, store, audit)
    recorder = UsageRecorder(redis, "gw-old")
    debit = await store.debit(ENT, 3)
    recorder.record(ENT, state.packages[0].id, debit.granted)
    await recorder.flush()
    await UsageConsumer(db, redis, "c1", block_ms=50).drain()
    async with db.begin() as conn:  # booked eight days ago
        await conn.execute(
            usage_batches.update().values(recorded_at=datetime.now(UTC) - timedelta(days=8))
        )
    assert await purge_usage_batches(db, timedelta(days=7)) == 1
    assert await count(db, usage_batches) == 0
    assert (await differences(db, store, [ENT]))[0] == {}  # the usage is still booked


async def test_idempotency_records_go_after_their_age(db: Database):
    now = datetime.now(UTC)
    async with db.begin() as conn:
        for key, age in (("old", timedelta(hours=25)), ("young", timedelta(hours=23))):
            await conn.execute(
                idempotency_records.insert().values(
                    actor="ops", key=key, request_hash="h", status=201, body=b"{}",
                    created_at=now - age,
                )
            )  # fmt: skip
    assert await purge_idempotency(db, timedelta(hours=24)) == 1
    async with db.engine.connect() as conn:
        keys = (await conn.execute(idempotency_records.select())).all()
    assert [row.key for row in keys] == ["young"]


async def test_old_wecom_events_and_finished_relay_deliveries_go(db: Database, audit):
    """Everything 31 days old goes but a relay delivery still pending and the alerts an
    enterprise was sent; everything a day old stays."""
    await enterprise(db, audit)
    now = datetime.now(UTC)
    old, young = now - timedelta(days=31), now - timedelta(days=1)
    async with db.begin() as conn:
        for name, at in (("old", old), ("young", young)):
            await conn.execute(
                wecom_event_keys.insert().values(enterprise_id=ENT, msg_key=name, first_seen_at=at)
            )
            await conn.execute(
                wecom_events.insert().values(
                    id=f"we_{name}", enterprise_id=ENT, received_at=at, msg_key=name,
                    msg_type="event", event="change_external_contact", change_type="add",
                    userid="u", result="relayed", message="<xml/>",
                )
            )  # fmt: skip
        for event_id, kind, at, status in (
            ("evt_relay_old", "wecom_event", old, "sent"),
            ("evt_relay_stuck", "wecom_event", old, "pending"),
            ("evt_relay_young", "wecom_event", young, "sent"),
            ("evt_alert_old", "low_balance", old, "sent"),
        ):
            await conn.execute(
                alert_events.insert().values(
                    id=event_id, enterprise_id=ENT, kind=kind, subject="s", payload={},
                    occurred_at=at, created_at=at,
                )
            )  # fmt: skip
            await conn.execute(
                alert_deliveries.insert().values(
                    id=f"dlv_{event_id}", event_id=event_id, enterprise_id=ENT,
                    channel_id="ch", channel_type="webhook", target="t", status=status,
                    attempts=1, schedule_pos=0, next_attempt_at=at, last_error="",
                    created_at=at, updated_at=at,
                )
            )  # fmt: skip
            await conn.execute(
                alert_attempts.insert().values(
                    delivery_id=f"dlv_{event_id}", number=1, target="t", worker="w",
                    started_at=at, outcome="sent", error="", response="",
                )
            )  # fmt: skip
    assert await purge_wecom(db, timedelta(days=30)) == 1
    async with db.engine.connect() as conn:
        keys = (await conn.execute(sa.select(wecom_event_keys.c.msg_key))).scalars().all()
        events = (await conn.execute(sa.select(wecom_events.c.id))).scalars().all()
        outbox = sorted((await conn.execute(sa.select(alert_events.c.id))).scalars().all())
        deliveries = await count(db, alert_deliveries)
        attempts = await count(db, alert_attempts)
    assert keys == ["young"]
    assert events == ["we_young"]
    assert outbox == ["evt_alert_old", "evt_relay_stuck", "evt_relay_young"]
    assert (deliveries, attempts) == (3, 3)
