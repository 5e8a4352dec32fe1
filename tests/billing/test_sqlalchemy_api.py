"""The billing code runs under the suite's ``filterwarnings = error`` with SQLAlchemy 2.1."""

from __future__ import annotations

from redis.asyncio import Redis

from billing.audit import SystemAuditor
from billing.consumer import UsageConsumer
from billing.db import Database
from billing.reconcile import reconcile
from metering import BalanceStore
from metering.usage import UsageRecorder
from tests.billing.support import ENT, enterprise, paid_order, redis_used, usage_by_bucket


async def test_the_consumer_uses_no_deprecated_sqlalchemy_api(
    db: Database, store: BalanceStore, redis: Redis, audit: SystemAuditor
):
    await enterprise(db, audit)
    await paid_order(db, store, audit)
    recorder = UsageRecorder(redis, "gw-1")
    debit = await store.debit(ENT, 5)
    for bucket_id, taken in debit.takes:
        recorder.record(ENT, bucket_id, taken)
    await recorder.aclose()
    assert await UsageConsumer(db, redis, "c1", block_ms=50).drain() == 1
    assert await usage_by_bucket(db) == await redis_used(store)


async def test_reconcile_uses_no_deprecated_sqlalchemy_api(
    db: Database, store: BalanceStore, audit: SystemAuditor
):
    await enterprise(db, audit)
    await paid_order(db, store, audit)
    await store.debit(ENT, 5)
    booked = await reconcile(db, store, settle=0.01)
    assert [d.delta for d in booked] == [5]
