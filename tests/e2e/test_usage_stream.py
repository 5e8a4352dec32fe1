"""The usage stream adds up to the buckets' used counters, through a SIGTERM mid-load."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp
import orjson
import pytest

from metering import BalanceStore
from metering.keys import USAGE_STREAM
from tests.e2e.harness import HTML_HEADERS, redis_config, site
from tests.helpers import gift, package


async def stream_totals(client) -> tuple[Counter[tuple[str, str]], list[tuple[str, int]]]:
    totals: Counter[tuple[str, str]] = Counter()
    keys = []
    for _, fields in await client.xrange(USAGE_STREAM):
        keys.append((fields["gateway_id"], int(fields["seq"])))
        for enterprise, bucket, n in orjson.loads(fields["rows"]):
            totals[(enterprise, bucket)] += n
    return totals, keys


@pytest.mark.timeout(120)
async def test_usage_entries_equal_used_counters_after_sigterm_mid_load(
    client, servers, origin, gateways
):
    store = BalanceStore(client)
    for enterprise in ("ent-u1", "ent-u2"):
        await store.credit(enterprise, gift("g", 150))
        await store.credit(enterprise, package("p", 10**6, at=1))
    gw = gateways(
        {
            "redis": redis_config(servers),
            "workers": 2,
            "usage_flush_ms": 200,
            "site": [
                site(origin, "ent-u1", host="one.test"),
                site(origin, "ent-u2", host="two.test"),
            ],
        }
    )
    await gw.wait_ready()
    served = Counter[int]()

    async def visitor(session: aiohttp.ClientSession, host: str, path: str) -> None:
        while True:
            try:
                async with session.get(
                    f"{gw.url}{path}", headers={**HTML_HEADERS, "Host": host}
                ) as resp:
                    await resp.read()
                    served[resp.status] += 1
            except aiohttp.ClientError:
                return  # the gateway went away: the end of this visitor

    async with aiohttp.ClientSession() as session:
        visitors = [
            asyncio.create_task(visitor(session, host, path))
            for host in ("one.test", "two.test")
            for path in ("/", "/", "/", "/fail500")  # some views given back
        ]
        await asyncio.sleep(1.5)
        assert served[200] > 50
        stopping = asyncio.create_task(asyncio.to_thread(gw.stop))  # SIGTERM mid-load
        assert await stopping == 0, gw.log_text()
        await asyncio.gather(*visitors)

    totals, keys = await stream_totals(client)
    assert len(keys) == len(set(keys)), "an entry was written twice"
    used = {}
    for enterprise in ("ent-u1", "ent-u2"):
        for bucket in (await store.snapshot(enterprise)).buckets:
            used[(enterprise, bucket.id)] = bucket.used
    assert {k: v for k, v in totals.items() if v} == {k: v for k, v in used.items() if v}
    assert sum(used.values()) == served[200]
