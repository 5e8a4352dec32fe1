"""One alert per crossing (docs/rules.md §4), through the real usage stream and consumer.

PV are taken in Redis as the gateway takes them, reported on ``pvgate:usage`` as the gateway
reports them, consumed by `UsageConsumer`, which tells the evaluator after each commit.
Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from billing.alerts.kinds import GIFT, SETTINGS, USAGE
from billing.consumer import UsageConsumer
from metering.keys import USAGE_STREAM
from tests.alerts.rig import ENT, Rig, webhook
from tests.alerts.servers import Receiver

_seq = itertools.count(1)


async def report(redis: Redis, rows: list[tuple[str, str, int]]) -> None:
    """A usage entry as a gateway appends it."""
    entry: dict[Any, Any] = {
        "gateway_id": "gw-test",
        "seq": next(_seq),
        "ts": int(time.time() * 1000),
        "rows": orjson.dumps(rows).decode(),
    }
    await redis.xadd(USAGE_STREAM, entry)


class Stream:
    """Views through Redis and the stream, consumed like billing consumes them."""

    def __init__(self, rig: Rig, redis: Redis) -> None:
        self.rig, self.redis = rig, redis
        self.consumer = UsageConsumer(
            rig.db, redis, "c1", block_ms=10, on_batch=rig.alerts.evaluator.touch
        )

    async def views(self, n: int) -> list[str]:
        """Take n PV, report them, consume; the kinds of the events that follow."""
        debit = await self.rig.store.debit(ENT, n)
        assert debit.granted == n, debit
        await report(self.redis, [(ENT, bucket, k) for bucket, k in debit.takes])
        return await self.consume()

    async def give_back(self, n: int, bucket: str = "gift-1") -> list[str]:
        assert await self.rig.store.give_back(ENT, bucket, n) == n
        await report(self.redis, [(ENT, bucket, -n)])
        return await self.consume()

    async def consume(self) -> list[str]:
        await self.consumer.drain()
        return [e.kind for e in await self.rig.alerts.evaluator.evaluate_touched()]


@pytest.fixture
async def stream(rig: Rig, redis: Redis, receiver: Receiver) -> Stream:
    await rig.enterprise()
    await rig.credit(150)
    saved = await rig.configure(webhook(receiver.hook), threshold=100)
    receiver.secrets += list(saved.new_secrets.values())
    assert await rig.evaluate(SETTINGS) == []  # 150 ≥ 100: armed, nothing to say
    return Stream(rig, redis)


async def test_one_event_per_crossing_and_a_top_up_re_arms(stream: Stream, receiver: Receiver):
    rig = stream.rig
    assert await stream.views(51) == ["low_balance"]  # 150 → 99
    assert await stream.views(9) == []  # 90: still below, nothing new
    assert await stream.views(1) == []
    await rig.credit(111, bucket="gift-2")  # 89 + 111 = 200
    assert [e.kind for e in await rig.evaluate(GIFT)] == ["recovered"]
    assert await stream.views(101) == ["low_balance"]  # 99 again
    assert await stream.views(89) == []
    assert await stream.views(9) == []
    assert await stream.views(1) == ["exhausted"]  # 0
    assert await rig.kinds() == ["low_balance", "recovered", "low_balance", "exhausted"]

    assert await rig.deliver() == 4  # concurrently: in any order, each once
    by_id = {r.event_id: r.payload for r in receiver.received}
    got = [(by_id[e.id]["type"], by_id[e.id]["data"]["available_pv"]) for e in await rig.events()]
    assert got == [("low_balance", 99), ("recovered", 200), ("low_balance", 99), ("exhausted", 0)]
    assert len(receiver.received) == 4
    assert all(r.verified_by for r in receiver.received)
    first = by_id[(await rig.events())[0].id]
    assert first["data"]["threshold_pv"] == 100
    assert first["data"]["buckets"] == [
        {
            "id": "gift-1",
            "kind": "gift",
            "granted_pv": 150,
            "used_pv": 51,
            "remaining_pv": 99,
            "expires_at": first["data"]["buckets"][0]["expires_at"],
        }
    ]
    assert first["timestamp"] == (await rig.events())[0].occurred_at.isoformat()
    assert {d.status for d in await rig.deliveries()} == {"sent"}


async def test_falling_from_above_to_zero_at_once_is_low_and_exhausted(stream: Stream):
    assert sorted(await stream.views(150)) == ["exhausted", "low_balance"]
    assert await stream.rig.evaluate(USAGE) == []  # still 0: nothing new


async def test_a_given_back_view_does_not_re_arm(stream: Stream):
    """Usage only lowers: 99 → 100 by a give-back is no recovery, so 99 again is no alert."""
    assert await stream.views(51) == ["low_balance"]
    assert await stream.give_back(1) == []  # 100: back at the threshold, but not a top-up
    assert await stream.views(1) == []  # 99: no second low_balance
    assert await stream.rig.kinds() == ["low_balance"]


async def test_a_threshold_above_the_balance_alerts_at_once(stream: Stream):
    rig = stream.rig
    await rig.configure(*[], threshold=200)  # the webhook removed: an event with no delivery
    assert [e.kind for e in await rig.evaluate(SETTINGS)] == ["low_balance"]
    await rig.configure(threshold=0)  # 0: off — and 150 ≥ 0 is a recovery
    assert [e.kind for e in await rig.evaluate(SETTINGS)] == ["recovered"]
    assert await stream.views(100) == []  # 50: no low-balance alert with the threshold off
    assert await rig.deliveries() == []


async def test_an_enterprise_without_settings_is_not_evaluated(rig: Rig, redis: Redis):
    await rig.enterprise("ent-plain")
    await rig.credit(10, enterprise_id="ent-plain")
    assert await rig.alerts.evaluator.evaluate(["ent-plain"], cause=USAGE) == []
    assert await rig.events("ent-plain") == []
