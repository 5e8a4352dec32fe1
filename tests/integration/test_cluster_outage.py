"""The gateway's background loops outlive a whole Redis Cluster going away, and a site
change is one atomic step (a MULTI) that version polling cannot miss."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from redis.asyncio import Redis

from gateway.routing import SiteWatcher
from metering.keys import SITES, SITES_VERSION, USAGE_STREAM
from metering.sites import Site, SiteRegistry, SiteStatus
from metering.usage import UsageRecorder
from pvgate.embedded import RedisClusterServers, RedisServer
from tests.conftest import cluster_client


def site(host: str) -> Site:
    return Site(
        host=host,
        enterprise_id="ent-c",
        origin="http://127.0.0.1:9",
        status=SiteStatus.APPROVED,
    )


async def wait_for(predicate, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


@pytest.mark.timeout(120)
async def test_site_polling_and_usage_flushing_survive_the_whole_cluster_going_away():
    cluster = RedisClusterServers(aof=True).start()
    client = await cluster_client(cluster).initialize()
    try:
        registry = SiteRegistry(client)
        await registry.put(site("a.test"))
        watcher = SiteWatcher(client, refresh=0.1)
        await watcher.start()
        usage = UsageRecorder(client, "gw-c", interval=0.1)
        await usage.start()
        assert watcher.table.route("a.test", "/") is not None

        for node in cluster.nodes:  # every node: the client raises RedisClusterException
            node.kill()
        usage.record("ent-c", "bucket-1", 3)
        await asyncio.sleep(2.0)  # many poll and flush rounds against no cluster at all
        assert usage.pending_entries == 1  # kept, not lost

        for node in cluster.nodes:
            node.start()
        cluster.wait_ok()
        assert not any(t.done() for t in watcher._tasks), "a loop stopped for good"
        await wait_for(lambda: usage.pending_entries == 0, 30)
        await registry.put(site("b.test"))
        await wait_for(lambda: watcher.table.route("b.test", "/") is not None, 30)
        entries = await client.xrange(USAGE_STREAM)
        assert entries is not None
        assert [e[1]["seq"] for e in entries] == ["1"]  # type: ignore[index]
        await usage.aclose()
        await watcher.aclose()
    finally:
        await client.aclose()
        cluster.stop()


async def test_a_site_change_and_its_version_are_one_transaction():
    with RedisServer() as server:
        client = Redis(host=server.host, port=server.port, decode_responses=True)
        monitor = Redis(host=server.host, port=server.port, decode_responses=True)
        commands: list[str] = []
        async with monitor.monitor() as m:
            listening = asyncio.create_task(_collect(m, commands))
            await asyncio.sleep(0.1)
            await SiteRegistry(client).put(site("a.test"))
            await asyncio.sleep(0.2)
            listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listening
            await m.connection.disconnect()
        names = [c.split()[0].strip('"').upper() for c in commands]
        start = names.index("MULTI")
        assert names[start : start + 4] == ["MULTI", "HSET", "INCRBY", "EXEC"], names
        assert SITES in commands[start + 1]
        assert SITES_VERSION in commands[start + 2]
        await client.aclose()
        await monitor.aclose()


async def _collect(m, commands: list[str]) -> None:
    while True:
        info = await m.next_command()
        commands.append(info["command"])
