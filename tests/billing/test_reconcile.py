"""Reconciliation of the ledger against Redis, and the record of what expiry cancelled."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from prometheus_client import REGISTRY
from redis.asyncio import Redis

from billing.audit import SystemAuditor
from billing.consumer import UsageConsumer
from billing.db import Database
from billing.operations import grant_gift
from billing.reconcile import ledger_used, reconcile, record_expirations
from billing.refunding import execute
from billing.schema import expirations, reconciliations
from metering import BalanceStore, BucketStatus
from metering.buckets import from_ms, to_ms
from metering.usage import UsageRecorder
from tests.billing.support import (
    ENT,
    TZ,
    count,
    enterprise,
    now,
    paid_order,
    redis_used,
    rows,
)


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def gateway_traffic(
    store: BalanceStore, recorder: UsageRecorder, pv: int, enterprise_id: str = ENT
) -> None:
    debit = await store.debit(enterprise_id, pv)
    assert debit.granted == pv
    for bucket_id, taken in debit.takes:
        recorder.record(enterprise_id, bucket_id, taken)


async def ledger(db: Database, enterprise_id: str = ENT) -> dict[str, int]:
    async with db.engine.connect() as conn:
        return {k: v for k, v in (await ledger_used(conn, enterprise_id)).items() if v}


async def test_usage_of_a_gateway_that_died_before_its_last_flush_is_booked_once(
    db: Database, store: BalanceStore, redis: Redis, audit: SystemAuditor
):
    await enterprise(db, audit)
    state = await paid_order(db, store, audit)
    bucket_id = state.packages[0].id
    recorder = UsageRecorder(redis, "gw-1")
    await gateway_traffic(store, recorder, 700)
    await recorder.flush()
    await gateway_traffic(store, recorder, 55)  # recorded, never flushed: the gateway died
    consumer = UsageConsumer(db, redis, "c1", block_ms=50)
    counted = (sample("pvgate_billing_reconciliation_differences_total"),
               sample("pvgate_billing_reconciliation_booked_pv_total"))  # fmt: skip

    booked = await reconcile(db, store, settle=0.2, drain=consumer.drain)
    assert [(d.bucket_id, d.ledger_used, d.redis_used, d.delta) for d in booked] == [
        (bucket_id, 700, 755, 55)
    ]
    assert sample("pvgate_billing_reconciliation_differences_total") == counted[0] + 1
    assert sample("pvgate_billing_reconciliation_booked_pv_total") == counted[1] + 55
    [row] = await rows(db, reconciliations)
    assert (row["enterprise_id"], row["bucket_id"], row["delta_pv"]) == (ENT, bucket_id, 55)
    assert (row["ledger_used"], row["redis_used"]) == (700, 755)
    assert await ledger(db) == await redis_used(store) == {bucket_id: 755}

    assert await reconcile(db, store, settle=0.2, drain=consumer.drain) == []
    assert await count(db, reconciliations) == 1


async def test_a_bucket_with_traffic_still_moving_is_not_booked(
    db: Database, store: BalanceStore, redis: Redis, audit: SystemAuditor
):
    await enterprise(db, audit)
    await enterprise(db, audit, "ent2")
    dead_bucket = (await paid_order(db, store, audit)).packages[0].id
    busy_bucket = (await paid_order(db, store, audit, "ent2")).packages[0].id
    consumer = UsageConsumer(db, redis, "c1", block_ms=50)
    await store.debit(ENT, 40)  # never reported: its gateway died
    await store.debit("ent2", 10)  # on its way, and more keeps coming
    stop = asyncio.Event()

    async def live_gateway() -> None:
        while not stop.is_set():
            await store.debit("ent2", 1)
            await asyncio.sleep(0.02)

    task = asyncio.create_task(live_gateway())
    try:
        booked = await reconcile(db, store, settle=0.2, drain=consumer.drain)
    finally:
        stop.set()
        await task
    assert [(d.enterprise_id, d.bucket_id, d.delta) for d in booked] == [(ENT, dead_bucket, 40)]
    assert await ledger(db, "ent2") == {}
    # Once it stands still, the next pass books it.
    booked = await reconcile(db, store, settle=0.1, drain=consumer.drain)
    assert [(d.bucket_id, d.delta) for d in booked] == [
        (busy_bucket, (await redis_used(store, "ent2"))[busy_bucket])
    ]
    assert await ledger(db, "ent2") == await redis_used(store, "ent2")


async def test_reconciliation_and_a_refund_recharge_agree(
    db: Database, store: BalanceStore, redis: Redis, audit: SystemAuditor
):
    """The refund books the gift's re-charge itself; reconciliation must not book it again."""
    await enterprise(db, audit)
    state = await paid_order(db, store, audit)
    package_id = state.packages[0].id
    gift = await grant_gift(
        db, store, audit, ENT, pv=100, reason="promo", order_id=state.order.id,
        expires_at=None, tz=TZ,
    )  # fmt: skip
    recorder = UsageRecorder(redis, "gw-1")
    await gateway_traffic(store, recorder, 130)
    await recorder.aclose()
    consumer = UsageConsumer(db, redis, "c1", block_ms=50)
    await consumer.drain()
    assert await ledger(db) == {gift.id: 100, package_id: 30}
    result = await execute(
        db, store, audit, state.order.id, [package_id], key="k", actor="ops", now=now(), tz=TZ
    )
    assert [line.used_after for line in result.lines] == [130]
    assert await reconcile(db, store, settle=0.05, drain=consumer.drain) == []
    assert await ledger(db) == await redis_used(store) == {gift.id: 100, package_id: 130}


async def test_expired_buckets_record_what_they_cancelled_once(
    db: Database, store: BalanceStore, audit: SystemAuditor
):
    await enterprise(db, audit)
    old = await paid_order(db, store, audit, paid_at=now() - timedelta(days=400))
    old_id = old.packages[0].id
    live = await paid_order(db, store, audit)
    gift = await grant_gift(
        db, store, audit, ENT, pv=100, reason="flash promo", order_id=None,
        expires_at=now() + timedelta(milliseconds=300), tz=TZ,
    )  # fmt: skip
    assert (await store.debit(ENT, 30)).takes == ((gift.id, 30),)
    await asyncio.sleep(0.35)
    assert (await store.debit(ENT, 1)).takes == ((live.packages[0].id, 1),)

    # The gift expired a moment ago: inside the grace it is left alone.
    assert await record_expirations(db, store, grace=timedelta(days=1)) == 1
    [row] = await rows(db, expirations)
    assert (row["bucket_id"], row["enterprise_id"], row["cancelled_pv"]) == (old_id, ENT, 1_000_000)
    assert to_ms(row["expired_at"]) == to_ms(old.packages[0].expires_at)

    assert await record_expirations(db, store, grace=timedelta(milliseconds=10)) == 1
    gift_row = (await rows(db, expirations, bucket_id=gift.id))[0]
    assert gift_row["cancelled_pv"] == 70
    snapshot = {b.id: b for b in (await store.snapshot(ENT)).buckets}
    assert gift_row["expired_at"] == from_ms(snapshot[gift.id].expires_at)
    assert to_ms(gift_row["expired_at"]) == to_ms(gift.expires_at)

    assert await record_expirations(db, store, grace=timedelta(0)) == 0
    assert await count(db, expirations) == 2
    assert snapshot[live.packages[0].id].status is BucketStatus.ACTIVE
