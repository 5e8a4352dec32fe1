"""Conservation: what Redis counted, the ledger booked and the usage endpoint reports agree.

``pvgate gateway`` (2 workers) and ``pvgate billing`` as separate processes, page views
flowing, then ``kill -9`` of one gateway worker (its last second of usage is never
flushed; the supervisor starts another) and of billing (its batch in progress is never
acknowledged; it is started again).  After the load, one reconciliation pass
(``pvgate reconcile``): per bucket, Redis ``used`` == the ledger's usage == what
``GET /v1/enterprises/{id}/usage`` reports, and every page served was debited.

Billing's ``claim_idle_ms`` is 2 s here instead of 30 s, so that the restarted consumer
takes over the killed one's pending entries within the test rather than half a minute
later; nothing else differs from the defaults.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.e2e.harness import HTML_HEADERS, Origin
from tests.e2e.stack import pvgate, start_stack

HOST = "keep.test"
CLIENTS = 16


async def load(url: str, statuses: Counter[int], stop: asyncio.Event) -> None:
    headers = {**HTML_HEADERS, "Host": HOST}
    async with aiohttp.ClientSession() as session:

        async def one() -> None:
            while not stop.is_set():
                try:
                    async with session.get(f"{url}/", headers=headers) as resp:
                        await resp.read()
                        statuses[resp.status] += 1
                except aiohttp.ClientError:
                    statuses[-1] += 1  # its worker was killed mid-request
                    await asyncio.sleep(0.01)

        await asyncio.gather(*(one() for _ in range(CLIENTS)))


@pytest.mark.timeout(240)
async def test_kill_9_of_a_worker_and_of_billing_loses_and_doubles_nothing(
    redis_node, tmp_path: Path
) -> None:
    redis_node.client().flushall()
    origin = await Origin().start()
    stack = start_stack(
        tmp_path, redis_node, split=True, billing={"consumer": {"claim_idle_ms": 2000}}
    )
    try:
        await stack.gateway.wait_ready()
        await stack.wait_billing()
        await stack.onboard("ent-keep", HOST, origin, 1_000_000)
        await asyncio.sleep(1.5)  # the workers have the approved site
        statuses: Counter[int] = Counter()
        stop = asyncio.Event()
        driving = asyncio.create_task(load(stack.gateway.url, statuses, stop))
        await asyncio.sleep(2.0)
        victim = stack.workers()[0]
        os.kill(victim, signal.SIGKILL)  # its unflushed usage is lost to the stream
        await asyncio.sleep(1.5)
        assert stack.billing is not None
        stack.billing.send_signal(signal.SIGKILL)  # mid-batch: entries left pending
        stack.billing.wait(10)
        await asyncio.sleep(1.0)
        stack.start_billing()
        await stack.wait_billing()
        await asyncio.sleep(2.0)
        stop.set()
        await driving
        assert statuses[200] > 500, statuses
        assert victim not in stack.workers()  # a new worker took its place

        deadline = time.monotonic() + 30
        while True:  # every entry in the stream consumed, the killed consumer's included
            await asyncio.sleep(1.0)
            report = orjson.loads(
                await asyncio.to_thread(
                    pvgate, "reconcile", "--config", str(stack.billing_config), "--settle", "2"
                )
            )
            used = await stack.redis_used("ent-keep")
            ledger = await stack.ledger_usage("ent-keep")
            if ledger == {k: v for k, v in used.items() if v} or time.monotonic() > deadline:
                break
        print(f"served {statuses[200]}, cut off {statuses[-1]}; Redis {used}; "
              f"ledger {ledger}; reconciliation booked {report['booked']}")  # fmt: skip
        assert ledger == {k: v for k, v in used.items() if v}
        # Every page served took its PV.  A view the killed worker had debited but not yet
        # delivered keeps its PV (nothing was left to give it back), and the client's retry
        # of it is served and debited again: at most one such view per client.
        assert 0 <= sum(used.values()) - statuses[200] <= CLIENTS
        sources = {
            item["source"]
            for item in (
                await stack.ok(
                    "GET", "/v1/enterprises/ent-keep/usage", since="2000-01-01T00:00:00Z"
                )
            )["items"]
        }
        assert "stream" in sources
    finally:
        stack.stop()
        await origin.stop()
