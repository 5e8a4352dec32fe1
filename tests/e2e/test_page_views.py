"""What counts as a page view, seen through a real gateway process (single node + cluster)."""

from __future__ import annotations

import aiohttp

from metering import BalanceStore
from tests.e2e.harness import HTML_HEADERS, asset_headers, redis_config, sample, site
from tests.helpers import gift, package


async def load_page(session: aiohttp.ClientSession, base: str) -> int:
    """A browser's page load: the document, then its CSS, JS and image."""
    async with session.get(f"{base}/", headers=HTML_HEADERS) as resp:
        status = resp.status
        await resp.read()
    for path, dest in (
        ("/static/app.css", "style"),
        ("/static/app.js", "script"),
        ("/static/logo.png", "image"),
    ):
        async with session.get(f"{base}{path}", headers=asset_headers(dest)) as resp:
            assert resp.status == 200
            await resp.read()
    return status


async def used(client, enterprise: str) -> int:
    return sum(b.used for b in (await BalanceStore(client).snapshot(enterprise)).buckets)


async def test_page_load_is_one_pv_reload_another_prefetch_and_head_none(
    client, servers, origin, gateways
):
    await BalanceStore(client).credit("ent-pv", package("p", 100))
    gw = gateways({"redis": redis_config(servers), "site": [site(origin, "ent-pv")]})
    await gw.wait_ready()
    headers = {"Host": "shop.test"}
    async with aiohttp.ClientSession(headers=headers) as session:
        assert await load_page(session, gw.url) == 200
        assert await used(client, "ent-pv") == 1
        assert await load_page(session, gw.url) == 200  # a reload
        assert await used(client, "ent-pv") == 2
        prefetch = {**HTML_HEADERS, "Sec-Purpose": "prefetch"}
        async with session.get(f"{gw.url}/", headers=prefetch) as resp:
            assert resp.status == 200
        async with session.head(f"{gw.url}/", headers=HTML_HEADERS) as resp:
            assert resp.status == 200
        async with session.options(f"{gw.url}/", headers=HTML_HEADERS) as resp:
            assert resp.status == 200
        legacy = {"Accept": "text/html"}  # no Sec-Fetch-*: Accept decides
        async with session.get(f"{gw.url}/other", headers=legacy) as resp:
            assert resp.status == 200
    assert await used(client, "ent-pv") == 3
    assert origin.hits["/"] == 5  # every request reached the origin, counted or not
    metrics = await gw.metrics()
    assert sample(metrics, "pvgate_pv_debited_total") == 3
    assert sample(metrics, "pvgate_requests_total", outcome="served") == 3
    assert sample(metrics, "pvgate_requests_total", outcome="not_counted") == 9


async def test_gift_first_fifo_through_the_gateway(client, servers, origin, gateways):
    store = BalanceStore(client)
    await store.credit("ent-f", package("p-old", 1, at=1))
    await store.credit("ent-f", gift("g", 1, at=5))
    await store.credit("ent-f", package("p-new", 1, at=2))
    gw = gateways({"redis": redis_config(servers), "site": [site(origin, "ent-f")]})
    await gw.wait_ready()
    async with aiohttp.ClientSession(headers={"Host": "shop.test"}) as session:
        for _ in range(4):
            async with session.get(f"{gw.url}/", headers=HTML_HEADERS) as resp:
                await resp.read()
    used_by = {b.id: b.used for b in (await store.snapshot("ent-f")).buckets}
    assert used_by == {"g": 1, "p-old": 1, "p-new": 1}
