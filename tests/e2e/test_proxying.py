"""Proxying: headers both ways, streamed bodies, origin failures giving the PV back."""

from __future__ import annotations

import asyncio
import gzip
import time

import aiohttp

from metering import BalanceStore
from metering.sites import Site, SiteRegistry, SiteStatus
from pvgate.embedded import free_port
from tests.e2e.harness import HTML_HEADERS, PAGE, redis_config, sample, site
from tests.helpers import package


async def used(client, enterprise: str) -> int:
    return sum(b.used for b in (await BalanceStore(client).snapshot(enterprise)).buckets)


async def test_origin_down_5xx_and_timeout_give_the_pv_back(client, servers, origin, gateways):
    await BalanceStore(client).credit("ent-o", package("p", 100))
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    gw = gateways(
        {
            "redis": redis_config(servers),
            "upstream": {"read_timeout_ms": 500, "connect_timeout_ms": 500},
            "site": [
                site(origin, "ent-o"),
                site(origin, "ent-o", host="down.test") | {"origin": dead},
            ],
        }
    )
    await gw.wait_ready()
    async with aiohttp.ClientSession() as session:
        for host, path, expected in (
            ("down.test", "/", 502),
            ("shop.test", "/fail500", 503),
            ("shop.test", "/slow", 504),
        ):
            headers = {**HTML_HEADERS, "Host": host}
            async with session.get(f"{gw.url}{path}", headers=headers) as resp:
                assert resp.status == expected, (host, path)
        assert await used(client, "ent-o") == 0
        async with session.get(f"{gw.url}/", headers={**HTML_HEADERS, "Host": "shop.test"}) as r:
            assert r.status == 200
    assert await used(client, "ent-o") == 1
    metrics = await gw.metrics()
    assert sample(metrics, "pvgate_pv_given_back_total") == 3
    assert sample(metrics, "pvgate_requests_total", outcome="upstream_error") == 3


async def test_headers_bodies_and_encoding_pass_through(redis_node, origin, gateways):
    redis_node.client().flushall()
    gw = gateways(
        {"redis": {"url": redis_node.url}, "metering": False, "site": [site(origin, "ent-h")]}
    )
    await gw.wait_ready()
    headers = {
        "Host": "shop.test",
        "Connection": "keep-alive, X-Drop",
        "X-Drop": "secret",
        "Keep-Alive": "timeout=5",
        "X-Forwarded-For": "10.1.1.1",
        "X-Custom": "kept",
    }
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.post(f"{gw.url}/echo?q=1", headers=headers, data=b"a" * 300_000) as r:
            echoed = await r.json()
        seen = {k.lower(): v for k, v in echoed["headers"].items()}
        assert echoed["path"] == "/echo?q=1"
        assert len(echoed["body"]) == 300_000
        assert seen["x-custom"] == "kept"
        assert "x-drop" not in seen
        assert "keep-alive" not in seen
        assert seen["x-forwarded-for"] == "10.1.1.1, 127.0.0.1"
        assert seen["x-forwarded-proto"] == "http"
        assert seen["x-forwarded-host"] == "shop.test"
        assert seen["via"] == "1.1 pvgate"
        async with session.get(f"{gw.url}/gzip", headers={"Host": "shop.test"}) as r:
            assert r.headers["Content-Encoding"] == "gzip"
            assert gzip.decompress(await r.read()) == PAGE
        async with session.get(f"{gw.url}/big", headers={"Host": "shop.test"}) as r:
            assert len(await r.read()) == 64 * 32768


async def test_routing_by_host_wildcard_prefix_and_registry_changes(
    client, servers, origin, gateways
):
    for e in ("ent-a", "ent-b", "ent-w"):
        await BalanceStore(client).credit(e, package("p", 100))
    gw = gateways(
        {
            "redis": redis_config(servers),
            "site": [
                site(origin, "ent-a", host="shared.test", path_prefix="/a"),
                site(origin, "ent-w", host="*.brand.test"),
                site(origin, "ent-b", host="pending.test", status="pending"),
            ],
        }
    )
    await gw.wait_ready()

    async def status(host: str, path: str = "/") -> int:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{gw.url}{path}", headers={**HTML_HEADERS, "Host": host}) as resp,
        ):
            return resp.status

    assert await status("shared.test", "/a/page") == 200
    assert await status("shared.test", "/b/page") == 404
    assert await status("x.y.brand.test") == 200
    assert await status("brand.test") == 404
    assert await status("pending.test") == 404
    assert await status("nowhere.test") == 404
    assert [await used(client, e) for e in ("ent-a", "ent-w", "ent-b")] == [1, 1, 0]

    registry = SiteRegistry(client)
    new = Site(
        host="shared.test",
        path_prefix="/b",
        enterprise_id="ent-b",
        origin=origin.url,
        status=SiteStatus.APPROVED,
    )
    await registry.put(new)
    changed = time.monotonic()
    while await status("shared.test", "/b/page") != 200:
        assert time.monotonic() - changed < 1.0, "new site not routed within 1 s"
        await asyncio.sleep(0.05)
    assert await used(client, "ent-b") == 1
    metrics = await gw.metrics()
    assert sample(metrics, "pvgate_requests_total", outcome="unknown_site") >= 4
