"""/healthz says the process lives; /readyz that every worker has its sites and — with
fail_closed, where a Redis outage refuses every page view — that Redis answers.  With
fail_open (the default) the gateway stays in rotation through an outage: it serves."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from pvgate.embedded import RedisServer
from tests.e2e.harness import site


async def probe(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, object]]:
    async with session.get(url) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize("mode", ["fail_open", "fail_closed"])
async def test_readiness_follows_redis_where_it_must_and_health_does_not(mode, origin, gateways):
    server = RedisServer().start()
    try:
        gw = gateways(
            {
                "redis": {"url": server.url},
                "workers": 2,
                "failure": {"mode": mode},
                "site": [site(origin, "e")],
            }
        )
        await gw.wait_ready()
        async with aiohttp.ClientSession() as session:
            status, body = await probe(session, gw.metrics_url("/readyz"))
            assert (status, body["workers_ready"], body["redis"]) == (200, 2, True)
            server.kill()
            gone = time.monotonic()
            while (await probe(session, gw.metrics_url("/readyz")))[1]["redis"]:
                assert time.monotonic() - gone < 5, "readiness did not notice Redis was gone"
                await asyncio.sleep(0.2)
            status, body = await probe(session, gw.metrics_url("/readyz"))
            assert status == (503 if mode == "fail_closed" else 200), body
            status, body = await probe(session, gw.metrics_url("/healthz"))
            assert (status, body) == (200, {"status": "ok"})
            server.start()
            back = time.monotonic()
            while (await probe(session, gw.metrics_url("/readyz")))[0] != 200:
                assert time.monotonic() - back < 10, "readiness did not come back with Redis"
                await asyncio.sleep(0.2)
    finally:
        server.stop()
