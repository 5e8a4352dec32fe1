"""The usage consumer: gateway entries into the ledger exactly once, whatever dies when."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from sqlalchemy.engine import make_url

import billing.consumer
from billing.audit import SystemAuditor
from billing.consumer import DEAD_LETTER_STREAM, GROUP, UsageConsumer
from billing.db import Database
from billing.operations import grant_gift
from billing.schema import usage_batches
from metering import BalanceStore
from metering.keys import USAGE_STREAM
from metering.usage import UsageRecorder
from tests.billing.support import (
    ENT,
    TZ,
    Killed,
    count,
    enterprise,
    paid_order,
    redis_used,
    stream_entries,
    usage_by_bucket,
    xadd,
)


def dead_letters_metric() -> float:
    return REGISTRY.get_sample_value("pvgate_billing_usage_dead_letters_total") or 0.0


async def traffic(
    store: BalanceStore, recorder: UsageRecorder, chunks: Sequence[int], enterprise_id: str = ENT
) -> None:
    """What a gateway does: debit in Redis, record which bucket paid, flush an entry."""
    for n in chunks:
        debit = await store.debit(enterprise_id, n)
        assert debit.granted == n
        for bucket_id, taken in debit.takes:
            recorder.record(enterprise_id, bucket_id, taken)
        await recorder.flush()


async def setup_buckets(db: Database, store: BalanceStore, audit: SystemAuditor) -> None:
    await enterprise(db, audit)
    await paid_order(db, store, audit, quantity=2)
    await grant_gift(
        db, store, audit, ENT, pv=500, reason="promo", order_id=None, expires_at=None, tz=TZ
    )


def consumer(db: Database, redis: Redis, name: str = "c1", **kw: Any) -> UsageConsumer:
    kw.setdefault("block_ms", 50)
    return UsageConsumer(db, redis, name, **kw)


async def pending(redis: Redis) -> int:
    return int((await redis.xpending(USAGE_STREAM, GROUP))["pending"])


async def test_recorded_usage_reaches_the_ledger_equal_to_redis(
    db: Database, store: BalanceStore, redis: Redis, audit: SystemAuditor
):
    await setup_buckets(db, store, audit)
    recorder = UsageRecorder(redis, "gw-1")
    await traffic(store, recorder, [300, 450, 999_000, 2_000])  # crosses three buckets
    # A page the origin failed to deliver: the PV goes back, and so does its row.
    snapshot = await store.snapshot(ENT)
    head = next(b.id for b in snapshot.buckets if b.used and b.remaining)
    assert await store.give_back(ENT, head, 40) == 40
    recorder.record(ENT, head, -40)
    await recorder.aclose()
    assert await redis.xlen(USAGE_STREAM) == 5

    assert await consumer(db, redis, count=2).drain() == 5
    used = await redis_used(store)
    assert sum(used.values()) == 300 + 450 + 999_000 + 2_000 - 40
    assert len(used) == 3
    assert await usage_by_bucket(db) == used
    assert await count(db, usage_batches) == 5
    assert await pending(redis) == 0
    assert await consumer(db, redis).drain() == 0


async def test_a_duplicated_entry_is_counted_once(
    db: Database, store: BalanceStore, redis: Redis, audit: SystemAuditor
):
    await setup_buckets(db, store, audit)
    recorder = UsageRecorder(redis, "gw-1")
    await traffic(store, recorder, [100, 200])
    c1 = consumer(db, redis)
    assert await c1.drain() == 2
    # An XADD that timed out but had landed is sent again by the gateway: same gateway_id+seq.
    entries = await stream_entries(redis, USAGE_STREAM)
    for _id, fields in entries:
        await xadd(redis, USAGE_STREAM, fields)
    await traffic(store, recorder, [50])
    await xadd(redis, USAGE_STREAM, (await stream_entries(redis, USAGE_STREAM))[-1][1])
    assert await redis.xlen(USAGE_STREAM) == 6
    assert await c1.drain() == 1
    assert await usage_by_bucket(db) == await redis_used(store)
    assert sum((await usage_by_bucket(db)).values()) == 350
    assert await count(db, usage_batches) == 3
    assert await pending(redis) == 0


async def test_a_kill_between_read_and_commit_leaves_entries_for_another_consumer(
    db: Database,
    store: BalanceStore,
    redis: Redis,
    audit: SystemAuditor,
    monkeypatch: pytest.MonkeyPatch,
):
    await setup_buckets(db, store, audit)
    recorder = UsageRecorder(redis, "gw-1")
    await traffic(store, recorder, [100, 200, 300])
    real = billing.consumer.record_entries

    async def killed_once(*args: Any) -> int:
        monkeypatch.setattr(billing.consumer, "record_entries", real)
        raise Killed("after XREADGROUP, before the commit")

    monkeypatch.setattr(billing.consumer, "record_entries", killed_once)
    doomed = consumer(db, redis, "c1")
    await doomed.ensure_group()
    with pytest.raises(Killed):
        await doomed.step(block=False)
    assert await pending(redis) == 3
    assert await usage_by_bucket(db) == {}

    survivor = consumer(db, redis, "c2", claim_idle_ms=20)
    await asyncio.sleep(0.05)
    assert await survivor.drain() == 3
    assert await usage_by_bucket(db) == await redis_used(store)
    assert await count(db, usage_batches) == 3
    assert await pending(redis) == 0
    assert await survivor.drain() == 0


async def test_a_kill_between_commit_and_xack_is_skipped_by_its_keys(
    db: Database,
    store: BalanceStore,
    redis: Redis,
    audit: SystemAuditor,
    monkeypatch: pytest.MonkeyPatch,
):
    await setup_buckets(db, store, audit)
    recorder = UsageRecorder(redis, "gw-1")
    await traffic(store, recorder, [100, 200])
    real_xack = redis.xack

    async def killed_once(*args: Any) -> Any:
        monkeypatch.setattr(redis, "xack", real_xack)
        raise Killed("after the commit, before XACK")

    monkeypatch.setattr(redis, "xack", killed_once)
    first = consumer(db, redis, "c1")
    await first.ensure_group()
    with pytest.raises(Killed):
        await first.step(block=False)
    assert await usage_by_bucket(db) == await redis_used(store)  # committed ...
    assert await pending(redis) == 2  # ... never acknowledged
    duplicates_before = REGISTRY.get_sample_value(
        "pvgate_billing_usage_entries_total", {"result": "duplicate"}
    )

    await traffic(store, recorder, [7])
    restarted = consumer(db, redis, "c1", claim_idle_ms=20)
    await asyncio.sleep(0.05)
    assert await restarted.drain() == 1  # only the new entry was written
    assert await usage_by_bucket(db) == await redis_used(store)
    assert sum((await usage_by_bucket(db)).values()) == 307
    assert await count(db, usage_batches) == 3
    assert await pending(redis) == 0
    duplicates_after = REGISTRY.get_sample_value(
        "pvgate_billing_usage_entries_total", {"result": "duplicate"}
    )
    assert (duplicates_after or 0) - (duplicates_before or 0) == 2


BAD_ENTRIES: list[dict[str, Any]] = [
    {"gateway_id": "gw-x", "seq": 1, "ts": 1, "rows": "not json"},
    {"gateway_id": "gw-x", "seq": 2, "ts": 1, "rows": orjson.dumps([[ENT, "b"]])},
    {"gateway_id": "gw-x", "seq": 3, "ts": 1, "rows": orjson.dumps([[ENT, "b", "many"]])},
    {"gateway_id": "gw-x", "seq": 0, "ts": 1, "rows": orjson.dumps([[ENT, "b", 1]])},
    {"gateway_id": "gw-x", "ts": 1, "rows": orjson.dumps([[ENT, "b", 1]])},
]


async def test_malformed_entries_go_to_the_dead_letter_stream(
    db: Database, store: BalanceStore, redis: Redis, audit: SystemAuditor
):
    await setup_buckets(db, store, audit)
    recorder = UsageRecorder(redis, "gw-1")
    await traffic(store, recorder, [10])
    bad_ids = [await xadd(redis, USAGE_STREAM, fields) for fields in BAD_ENTRIES]
    await traffic(store, recorder, [20])
    metric = dead_letters_metric()

    assert await consumer(db, redis).drain() == 2
    letters = await stream_entries(redis, DEAD_LETTER_STREAM)
    assert [fields["source_id"] for _id, fields in letters] == bad_ids
    assert all(fields["error"] for _id, fields in letters)
    assert letters[0][1]["rows"] == "not json"  # kept as it came, for a human to look at
    assert dead_letters_metric() - metric == len(BAD_ENTRIES)
    assert await usage_by_bucket(db) == await redis_used(store)
    assert await pending(redis) == 0


async def refuse_bucket(db: Database, bucket_id: str) -> None:
    """Make the ledger refuse usage rows of ``bucket_id``, as a database refuses a row."""
    statements = (
        [f"CREATE TRIGGER refuse BEFORE INSERT ON usage WHEN NEW.bucket_id = '{bucket_id}' "
         "BEGIN SELECT RAISE(ABORT, 'refused'); END"]
        if db.dialect == "sqlite"
        else [f"CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN IF NEW.bucket_id = "
              f"'{bucket_id}' THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$ "
              "LANGUAGE plpgsql",
              "CREATE TRIGGER refuse BEFORE INSERT ON usage FOR EACH ROW "
              "EXECUTE FUNCTION refuse()"]
    )  # fmt: skip
    async with db.begin() as conn:
        for statement in statements:
            await conn.execute(sa.text(statement))


async def test_an_entry_refused_max_deliveries_times_is_dead_lettered(
    db: Database, store: BalanceStore, redis: Redis, audit: SystemAuditor
):
    """The database answers and refuses the entry each time (a trigger refuses its bucket)."""
    await setup_buckets(db, store, audit)
    await refuse_bucket(db, "refused")
    fields: dict[Any, Any] = {"gateway_id": "gw-x", "seq": "1", "ts": "1",
                              "rows": orjson.dumps([[ENT, "refused", 5]]).decode()}  # fmt: skip
    entry_id = await redis.xadd(USAGE_STREAM, dict(fields))
    metric = dead_letters_metric()
    failing = consumer(db, redis, claim_idle_ms=0, max_deliveries=3)
    await failing.ensure_group()
    for _attempt in range(3):
        assert await failing.step(block=False) == 0
        assert await pending(redis) == 1
        assert await redis.xlen(DEAD_LETTER_STREAM) == 0
    assert await failing.step(block=False) == 0
    assert await pending(redis) == 0
    [(_id, letter)] = await stream_entries(redis, DEAD_LETTER_STREAM)
    assert letter["source_id"] == entry_id
    assert letter["error"] == "failed 3 deliveries"
    assert {k: letter[k] for k in fields} == fields
    assert dead_letters_metric() - metric == 1
    assert await usage_by_bucket(db) == {}


async def test_a_database_that_cannot_be_reached_refuses_nothing(
    db: Database, store: BalanceStore, redis: Redis, audit: SystemAuditor, tmp_path: Any
):
    """However many rounds it lasts, the entry stays pending, then is booked."""
    await setup_buckets(db, store, audit)
    recorder = UsageRecorder(redis, "gw-1")
    await traffic(store, recorder, [10])
    if db.dialect == "sqlite":
        broken = Database(f"sqlite:///{tmp_path}/missing/dir/ledger.db")
    else:
        broken = Database(
            make_url(db.url).set(database="pvgate_missing").render_as_string(hide_password=False)
        )
    failing = consumer(broken, redis, claim_idle_ms=0, max_deliveries=3)
    try:
        await failing.ensure_group()
        for _attempt in range(6):  # what run() does: log the error, wait, step again
            with pytest.raises(sa.exc.DBAPIError):
                await failing.step(block=False)
            assert await pending(redis) == 1
    finally:
        await broken.dispose()
    assert await redis.xlen(DEAD_LETTER_STREAM) == 0
    assert await consumer(db, redis, claim_idle_ms=0).drain() == 1
    assert await usage_by_bucket(db) == await redis_used(store)


async def test_a_poison_entry_is_dead_lettered_alone(
    db: Database, store: BalanceStore, redis: Redis, audit: SystemAuditor
):
    await setup_buckets(db, store, audit)
    recorder = UsageRecorder(redis, "gw-1")
    await traffic(store, recorder, [10])
    bucket = next(iter(await redis_used(store)))
    poison = await redis.xadd(
        USAGE_STREAM,
        {"gateway_id": "gw-x", "seq": 1, "ts": 1, "rows": orjson.dumps([[ENT, bucket, 2**63]])},
    )
    await traffic(store, recorder, [20])
    worker = consumer(db, redis, claim_idle_ms=0, max_deliveries=2)
    await worker.ensure_group()
    outcomes = []
    for _attempt in range(4):  # what run() does: log database errors and keep stepping
        [outcome] = await asyncio.gather(worker.step(block=False), return_exceptions=True)
        outcomes.append(outcome)
    assert all(isinstance(o, int) for o in outcomes), outcomes
    assert [f["source_id"] for _id, f in await stream_entries(redis, DEAD_LETTER_STREAM)] == [
        poison
    ]
    assert await usage_by_bucket(db) == await redis_used(store)
    assert await pending(redis) == 0


async def test_run_consumes_until_stopped(
    db: Database, store: BalanceStore, redis: Redis, audit: SystemAuditor
):
    await setup_buckets(db, store, audit)
    recorder = UsageRecorder(redis, "gw-1", interval=0.05)
    await recorder.start()
    stop = asyncio.Event()
    task = asyncio.create_task(consumer(db, redis).run(stop))
    await traffic(store, recorder, [5, 6, 7])
    for _n in range(5):  # recorded only: the recorder's own task flushes them
        debit = await store.debit(ENT, 3)
        for bucket_id, taken in debit.takes:
            recorder.record(ENT, bucket_id, taken)
        await asyncio.sleep(0.03)
    await recorder.aclose()
    deadline = asyncio.get_running_loop().time() + 5
    while await usage_by_bucket(db) != await redis_used(store):
        assert asyncio.get_running_loop().time() < deadline, "the consumer did not catch up"
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert sum((await usage_by_bucket(db)).values()) == 5 + 6 + 7 + 15
    assert task.result() is None
