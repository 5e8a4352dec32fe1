"""A ledger database that cannot be reached dead-letters nothing, however long it lasts.

On PostgreSQL, the outage is real: the test database stops accepting connections
(``ALTER DATABASE … ALLOW_CONNECTIONS false``) and its sessions are terminated.  The
consumer claims stale entries after 100 ms here instead of 30 s, with a dead-letter
threshold of 2 deliveries instead of 5, so that an outage of a few seconds spans many
claim rounds — before, each of them counted a delivery, and healthy entries went to the
dead letters.
"""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from redis.asyncio import Redis
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from billing.audit import SystemAuditor
from billing.consumer import DEAD_LETTER_STREAM, UsageConsumer
from billing.db import Database, async_url
from billing.reconcile import differences
from metering import BalanceStore
from metering.keys import USAGE_STREAM
from metering.usage import UsageRecorder
from tests.billing.support import ENT, enterprise, paid_order


async def set_connections(db: Database, allowed: bool) -> None:
    name = make_url(db.url).database
    admin = create_async_engine(
        async_url(make_url(db.url).set(database="postgres").render_as_string(False)),
        isolation_level="AUTOCOMMIT",
    )
    async with admin.connect() as conn:
        await conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {allowed}'))
        if not allowed:
            await conn.execute(
                sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"),
                {"name": name},
            )  # fmt: skip
    await admin.dispose()


async def test_entries_read_during_an_outage_are_booked_once_it_ends(
    pg_db: Database, store: BalanceStore, redis: Redis, audit: SystemAuditor
):
    await redis.delete(USAGE_STREAM, DEAD_LETTER_STREAM)
    await enterprise(pg_db, audit)
    state = await paid_order(pg_db, store, audit)
    bucket_id = state.packages[0].id
    consumer = UsageConsumer(pg_db, redis, "c1", block_ms=20, claim_idle_ms=100, max_deliveries=2)
    await consumer.ensure_group()
    recorder = UsageRecorder(redis, "gw-1")
    stop = asyncio.Event()
    await set_connections(pg_db, allowed=False)
    running = asyncio.create_task(consumer.run(stop))
    try:
        for _ in range(10):  # entries arrive during the outage, read and left pending
            debit = await store.debit(ENT, 3)
            recorder.record(ENT, bucket_id, debit.granted)
            await recorder.flush()
            await asyncio.sleep(0.3)
        pending = await redis.xpending(USAGE_STREAM, "billing")
        assert pending["pending"] > 0  # read while the database was away
    finally:
        await set_connections(pg_db, allowed=True)
    await asyncio.sleep(1.5)  # claimed again and booked
    stop.set()
    await running
    await consumer.drain()
    assert await redis.xlen(DEAD_LETTER_STREAM) == 0
    assert (await differences(pg_db, store, [ENT]))[0] == {}
    assert (await differences(pg_db, store, [ENT]))[1][(ENT, bucket_id)] == 30
