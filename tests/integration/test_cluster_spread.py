"""Test 5: enterprises spread over all three masters; every script works for each."""

from __future__ import annotations

import asyncio
from collections import Counter

from redis.crc import key_slot

from metering import BalanceStore, Meter
from metering.keys import enterprise_keys
from tests.conftest import cluster_client
from tests.helpers import gift, package


async def test_thousand_enterprises_on_all_masters_without_crossslot(redis_cluster):
    redis_cluster.flushall()
    client = await cluster_client(redis_cluster).initialize()
    store, meter = BalanceStore(client), Meter(client)
    await meter.prepare()
    enterprises = [f"corp{i:04d}" for i in range(1000)]
    for e in enterprises:
        slots = {key_slot(k.encode()) for k in enterprise_keys(e)}
        assert len(slots) == 1, e  # the hash tag keeps one enterprise in one slot

    async def exercise(e: str) -> None:
        assert await store.credit(e, gift("g", 2, order="o"))
        assert await store.credit(e, package("p", 3, at=1, order="o"))
        assert (await meter.debit(e)).bucket_id == "g"
        assert (await store.debit(e, 2)).takes == (("g", 1), ("p", 1))
        assert await store.give_back(e, "p", 1) == 1
        voided = await store.void_gifts(e, ["g"], recharge=True)
        assert voided.recharged == {"p": 2}
        assert await store.freeze(e, ["p"]) == {"p": 2}
        assert await store.set_suspended(e, True) is False
        assert (await store.snapshot(e)).reason == "suspended"

    for start in range(0, 1000, 100):
        await asyncio.gather(*(exercise(e) for e in enterprises[start : start + 100]))

    per_master: Counter[int] = Counter()
    for e in enterprises:
        node = redis_cluster.node_for_slot(key_slot(enterprise_keys(e).meta.encode()))
        per_master[node.port] += 1
    assert set(per_master) == {n.port for n in redis_cluster.nodes}
    assert min(per_master.values()) > 200  # crc16 spreads them roughly evenly
    # The keys really live on the masters the slots say: meta, all and buckets of each
    # enterprise (its live set is empty now that every bucket is void or refunded).
    sizes = {n.port: n.client().dbsize() for n in redis_cluster.nodes}
    assert sizes == {port: 3 * count for port, count in per_master.items()}
    await client.aclose()
