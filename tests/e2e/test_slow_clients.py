"""Clients that send part of a body and go silent cannot hold the gateway or the origin.

Default settings.  A small body is read whole before the origin is contacted, so a client
that stops mid-body holds no origin connection at all; a large one streams, but uploads
may hold only half of an origin's connections (32 of 64).  Either way a normal visitor is
served at once while 200 such clients hang.  Each client holding a connection gets 408
when its body has been idle for ``body_idle_timeout_s`` (10 s), its origin connection
closed, not reused; an upload that found no share of the pool free gets 503 once it has
waited ``connect_timeout_ms`` (2 s) for one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter

import pytest

from metering import BalanceStore
from tests.conftest import single_client
from tests.e2e.harness import HTML_HEADERS, redis_config, sample
from tests.e2e.rawhttp import CapturingOrigin, exchange
from tests.helpers import package

SLOW = 200
DOC = b"".join(f"{k}: {v}\r\n".encode() for k, v in HTML_HEADERS.items())
GOOD = b"GET / HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n" + DOC + b"\r\n"


async def stall(port: int, length: int, sent: int, answers: list[bytes]) -> None:
    """Send a head announcing ``length`` bytes and ``sent`` of them, then nothing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = b"POST /upload HTTP/1.1\r\nHost: shop.test\r\nContent-Length: %d\r\n\r\n" % length
    writer.write(head + b"x" * sent)
    await writer.drain()
    try:
        async with asyncio.timeout(30):
            answers.append(await reader.read(4096))
    except (TimeoutError, ConnectionError):
        answers.append(b"")
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("length", "sent"),
    [pytest.param(1000, 10, id="small-body"), pytest.param(4 << 20, 200_000, id="large-body")],
)
async def test_silent_bodies_cannot_starve_the_site(redis_node, gateways, length, sent):
    redis_node.client().flushall()
    client = single_client(redis_node)
    origin = await CapturingOrigin().start()
    try:
        store = BalanceStore(client)
        await store.credit("ent-slow", package("p", 100))
        site = {"host": "shop.test", "enterprise_id": "ent-slow", "origin": origin.url}
        gw = gateways({"redis": redis_config(redis_node), "site": [{**site, "status": "approved"}]})
        await gw.wait_ready()
        answers: list[bytes] = []
        stalled = [asyncio.create_task(stall(gw.port, length, sent, answers)) for _ in range(SLOW)]
        await asyncio.sleep(1.0)  # every slow client is connected and silent
        assert not answers
        if length <= 65536:
            assert origin.connections == 0  # read whole first: nothing reached the origin
        else:
            assert origin.connections <= 64 // 2  # uploads hold at most half the pool
        started = time.monotonic()
        reply = await exchange(gw.port, [GOOD])
        waited = time.monotonic() - started
        print(f"a normal page view among {SLOW} silent bodies: {waited * 1000:.0f} ms")
        assert reply.statuses == [200], reply.data[:300]
        assert waited < 1.0
        await asyncio.gather(*stalled)
        statuses = Counter(int(answer.split(b" ")[1]) for answer in answers)
        holding = SLOW if length <= 65536 else 32
        assert statuses == +Counter({408: holding, 503: SLOW - holding}), statuses
        # Only the normal view ever reached the origin whole.
        assert [r.target for r in origin.received] == [b"/"]
        assert (await store.snapshot("ent-slow")).buckets[0].used == 1
        metrics = await gw.metrics()
        assert sample(metrics, "pvgate_client_timeouts_total", kind="body") == holding
    finally:
        await client.aclose()
        await origin.stop()
