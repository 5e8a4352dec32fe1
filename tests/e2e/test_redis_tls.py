"""The whole product on Redis that wants a password and speaks TLS only.

``pvgate run`` (billing and a gateway worker) with default settings but for the ``[redis]``
section: onboarding through the admin API (the site reaches the worker through the
registry and its notifications), page views debited by the Meter's own connection,
usage through the stream into the ledger.  On one node and on a Redis Cluster.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from pvgate.embedded import RedisClusterServers, RedisServer
from tests.e2e.harness import HTML_HEADERS, Origin
from tests.e2e.stack import start_stack
from tests.tls import Pki, redis_section

VIEWS = 20


@pytest.fixture(params=["tls_node", "tls_cluster"])
def tls_servers(request: pytest.FixtureRequest) -> RedisServer | RedisClusterServers:
    servers: RedisServer | RedisClusterServers = request.getfixturevalue(request.param)
    return servers


@pytest.mark.timeout(120)
async def test_page_views_and_their_usage_over_tls_with_a_password(
    tls_servers: RedisServer | RedisClusterServers, pki: Pki, tmp_path: Path
) -> None:
    redis = redis_section(tls_servers, pki)
    enterprise = f"ent-tls-{tls_servers.__class__.__name__.lower()}"
    host = f"{enterprise}.test"
    origin = await Origin().start()
    stack = start_stack(
        tmp_path, tls_servers, workers=1, gateway={"redis": redis}, billing={"redis": redis}
    )
    try:
        await stack.gateway.wait_ready()
        await stack.wait_billing()
        await stack.onboard(enterprise, host, origin, 1000)
        headers = {**HTML_HEADERS, "Host": host}
        statuses = []
        async with aiohttp.ClientSession() as session:
            for _ in range(100):  # the approved site reaches the worker
                async with session.get(f"{stack.gateway.url}/", headers=headers) as resp:
                    await resp.read()
                    if resp.status == 200:
                        break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"site never served: {stack.gateway.log_text()}")
            for _ in range(VIEWS - 1):
                async with session.get(f"{stack.gateway.url}/", headers=headers) as resp:
                    await resp.read()
                    statuses.append(resp.status)
        assert statuses == [200] * (VIEWS - 1)
        assert sum((await stack.wait_ledger(enterprise)).values()) == VIEWS
    finally:
        stack.stop()
        await origin.stop()
