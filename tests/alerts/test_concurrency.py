"""Two billing processes consuming one stream and evaluating one enterprise at once:
exactly one event per crossing (docs/rules.md §4), run after run.

Each "process" has its own database engine (its own connections and transactions), its own
Redis client, consumer and evaluator; a producer takes PV and reports them while both
consume, and both evaluate the same enterprise at the same instant as well.  SQLite and
PostgreSQL; ``--run-slow`` runs many more rounds.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from billing.alerts.kinds import SETTINGS, USAGE
from billing.consumer import UsageConsumer
from billing.db import Database
from metering import BalanceStore
from metering.keys import USAGE_STREAM
from pvgate.embedded import RedisServer
from tests.alerts.rig import Clock, Rig, alert_settings
from tests.conftest import single_client

_seq = itertools.count(1)


async def produce(store: BalanceStore, redis: Redis, enterprise_id: str, chunks: int) -> None:
    """Take 5 PV at a time, each debit reported as a gateway reports it."""
    for _ in range(chunks):
        debit = await store.debit(enterprise_id, 5)
        rows = [[enterprise_id, bucket, n] for bucket, n in debit.takes]
        entry: dict[Any, Any] = {
            "gateway_id": "gw-race",
            "seq": next(_seq),
            "ts": int(time.time() * 1000),
            "rows": orjson.dumps(rows).decode(),
        }
        await redis.xadd(USAGE_STREAM, entry)
        await asyncio.sleep(0.001)


async def consume(rig: Rig, consumer: UsageConsumer, done: asyncio.Event) -> None:
    while True:
        finished = done.is_set()
        await consumer.drain()
        await rig.alerts.evaluator.evaluate_touched()
        if finished:
            return
        await asyncio.sleep(0)


async def one_round(a: Rig, b: Rig, redis: Redis, run: int) -> list[str]:
    enterprise_id = f"ent-race-{run}"
    await a.enterprise(enterprise_id)
    await a.credit(150, enterprise_id=enterprise_id)
    await a.configure(threshold=100, enterprise_id=enterprise_id)
    await asyncio.gather(a.evaluate(SETTINGS, enterprise_id), b.evaluate(SETTINGS, enterprise_id))
    consumers = [
        UsageConsumer(r.db, redis, f"c{i}", block_ms=5, on_batch=r.alerts.evaluator.touch)
        for i, r in enumerate((a, b))
    ]
    done = asyncio.Event()
    readers = [
        asyncio.create_task(consume(r, c, done)) for r, c in zip((a, b), consumers, strict=True)
    ]
    await produce(a.store, redis, enterprise_id, 30)  # 150 PV: below 100, then 0
    done.set()
    await asyncio.gather(*readers)
    for _ in range(3):  # and evaluating the same enterprise at the same instant
        await asyncio.gather(a.evaluate(USAGE, enterprise_id), b.evaluate(USAGE, enterprise_id))
    return await a.kinds(enterprise_id)


async def race(db: Database, redis_node: RedisServer, redis: Redis, runs: int) -> None:
    other_db = Database(db.url)
    other_redis = single_client(redis_node)
    clock = Clock()
    a = Rig(db, BalanceStore(redis), clock, alert_settings(), owner="billing-a")
    b = Rig(other_db, BalanceStore(other_redis), clock, alert_settings(), owner="billing-b")
    try:
        await UsageConsumer(db, redis, "c0").ensure_group()
        for run in range(runs):
            kinds = await one_round(a, b, redis, run)
            assert sorted(kinds) == ["exhausted", "low_balance"], f"run {run}: {kinds}"
    finally:
        await a.close()
        await b.close()
        await other_db.dispose()
        await other_redis.aclose()


async def test_two_consumers_write_one_event_per_crossing(
    db: Database, redis_node: RedisServer, redis: Redis
):
    await race(db, redis_node, redis, runs=8)


@pytest.mark.slow
async def test_two_consumers_write_one_event_per_crossing_many_times(
    db: Database, redis_node: RedisServer, redis: Redis
):
    await race(db, redis_node, redis, runs=150)
