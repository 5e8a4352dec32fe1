"""Admission control: past its slots and its queue, a worker answers 503 at once.

The limits are set tiny here (2 slots, a queue of 2, 0.5 s of waiting) so that a handful
of requests to an origin that takes 5 s saturates the worker; with the defaults it would
take thousands.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiohttp
import pytest

from metering import BalanceStore
from tests.e2e.harness import HTML_HEADERS, redis_config, sample, site
from tests.helpers import package


@pytest.mark.timeout(60)
async def test_a_saturated_worker_refuses_fast_before_taking_a_pv(
    client, servers, origin, gateways
):
    store = BalanceStore(client)
    await store.credit("ent-busy", package("p", 100))
    gw = gateways(
        {
            "redis": redis_config(servers),
            "site": [site(origin, "ent-busy")],
            "admission": {"max_inflight": 2, "max_queued": 2, "queue_timeout_ms": 500},
        }
    )
    await gw.wait_ready()
    headers = {**HTML_HEADERS, "Host": "shop.test"}
    answers: list[tuple[int, float, str | None]] = []
    async with aiohttp.ClientSession() as session:

        async def view() -> None:
            started = time.monotonic()
            async with session.get(f"{gw.url}/slow", headers=headers) as resp:
                await resp.read()
                answers.append(
                    (resp.status, time.monotonic() - started, resp.headers.get("Retry-After"))
                )

        await asyncio.gather(*(view() for _ in range(10)))
        statuses = Counter(status for status, _, _ in answers)
        assert statuses == {200: 2, 503: 8}, answers
        refused = sorted(elapsed for status, elapsed, _ in answers if status == 503)
        assert all(retry == "1" for status, _, retry in answers if status == 503)
        assert refused[5] < 0.4, refused  # 6 found the queue full: answered at once
        assert 0.4 < refused[6] < 4.0, refused  # 2 waited out the queue's 0.5 s

        async with session.get(f"{gw.url}/", headers=headers) as resp:  # idle again
            assert resp.status == 200
    metrics = await gw.metrics()
    assert sample(metrics, "pvgate_requests_total", outcome="overloaded") == 8
    assert sample(metrics, "pvgate_admission_refused_total", reason="queue_full") == 6
    assert sample(metrics, "pvgate_admission_refused_total", reason="queue_timeout") == 2
    assert sample(metrics, "pvgate_requests_total", outcome="fail_open") == 0
    assert sample(metrics, "pvgate_redis_errors_total", kind="timeout") == 0
    # Only the views admitted were charged: the two slow ones and the last.
    assert (await store.snapshot("ent-busy")).buckets[0].used == 3
