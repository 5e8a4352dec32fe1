"""Refusals through the gateway: the block page, expiry, cached blocked state, top-ups."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from metering import BalanceStore
from metering.buckets import BucketKind, BucketSpec
from tests.e2e.harness import HTML_HEADERS, asset_headers, redis_config, sample, site
from tests.helpers import gift, package


async def get_page(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str], str]:
    async with session.get(url, headers=HTML_HEADERS) as resp:
        return resp.status, dict(resp.headers), await resp.text()


async def test_block_page_at_zero_and_top_up_unblocks_within_a_second(
    client, servers, origin, gateways
):
    store = BalanceStore(client)
    await store.credit("ent-z", gift("g", 2))
    gw = gateways({"redis": redis_config(servers), "site": [site(origin, "ent-z")]})
    await gw.wait_ready()
    async with aiohttp.ClientSession(headers={"Host": "shop.test"}) as session:
        assert [(await get_page(session, f"{gw.url}/"))[0] for _ in range(2)] == [200, 200]
        status, headers, body = await get_page(session, f"{gw.url}/")
        assert status == 402
        assert headers["X-PV-Block-Reason"] == "exhausted"
        assert headers["Cache-Control"] == "no-store"
        assert "text/html" in headers["Content-Type"]
        assert "页面浏览量已用完" in body
        assert "used up its page views" in body
        # The enterprise's other requests are refused too, from the local cache.
        async with session.get(f"{gw.url}/static/app.css", headers=asset_headers("style")) as r:
            assert r.status == 402
            assert r.headers["X-PV-Block-Reason"] == "exhausted"
        hits_before = origin.hits["/"]
        await store.credit("ent-z", package("top-up", 5))
        topped_up = time.monotonic()
        while (await get_page(session, f"{gw.url}/"))[0] != 200:
            assert time.monotonic() - topped_up < 1.0, "top-up not seen within 1 s"
            await asyncio.sleep(0.05)
        assert origin.hits["/"] == hits_before + 1  # refused views never reached the origin
    snapshot = await store.snapshot("ent-z")
    assert {b.id: b.used for b in snapshot.buckets} == {"g": 2, "top-up": 1}
    metrics = await gw.metrics()
    assert sample(metrics, "pvgate_requests_total", outcome="blocked_exhausted") >= 2


async def test_expiry_at_the_boundary_blocks_with_reason_expired(client, servers, origin, gateways):
    store = BalanceStore(client)
    gw = gateways({"redis": redis_config(servers), "site": [site(origin, "ent-x")]})
    await gw.wait_ready()
    now = (await store.snapshot("ent-x")).now
    expires = now + 1500
    await store.credit(
        "ent-x",
        BucketSpec(
            id="p", kind=BucketKind.PACKAGE, granted=1000, expires_at=expires, ordered_at=now
        ),
    )
    async with aiohttp.ClientSession(headers={"Host": "shop.test"}) as session:
        assert (await get_page(session, f"{gw.url}/"))[0] == 200
        while (await store.snapshot("ent-x")).now < expires:
            await asyncio.sleep(0.05)
        status, headers, body = await get_page(session, f"{gw.url}/")
    assert status == 402
    assert headers["X-PV-Block-Reason"] == "expired"
    assert "expired" in body
    assert (await store.snapshot("ent-x")).buckets[0].used == 1


async def test_block_status_is_configurable_and_suspension_blocks(
    client, servers, origin, gateways
):
    store = BalanceStore(client)
    await store.credit("ent-s", package("p", 10))
    await store.set_suspended("ent-s", True)
    gw = gateways(
        {"redis": redis_config(servers), "block_status": 403, "site": [site(origin, "ent-s")]}
    )
    await gw.wait_ready()
    async with aiohttp.ClientSession(headers={"Host": "shop.test"}) as session:
        status, headers, _ = await get_page(session, f"{gw.url}/")
    assert (status, headers["X-PV-Block-Reason"]) == (403, "suspended")
    assert (await store.snapshot("ent-s")).buckets[0].used == 0
