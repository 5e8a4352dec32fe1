"""A traffic burst is metered to the PV, with the shipped defaults (docs/architecture.md §10).

``pvgate run`` with 2 gateway workers and nothing changed but ports: a site approved and
a 1,000 PV gift granted through the admin API, then 5,000 page views at once, each on its
own connection.  Redis is healthy, so every answer is a 200 for a PV taken, a 402 once
the balance is gone, or a 503 from admission control — never a page served without its
PV, never a Redis failure declared because the workers' own loops ran late.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.harness import HTML_HEADERS, sample
from tests.e2e.stack import Stack, start_stack

HOST = "burst.test"
BALANCE = 1000


async def burst(url: str, views: int, host: str = HOST) -> Counter[int]:
    """``views`` page views of ``host`` at once, one connection each; the statuses."""
    headers = {**HTML_HEADERS, "Host": host}
    statuses: Counter[int] = Counter()
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def view() -> None:
            try:
                async with session.get(f"{url}/", headers=headers) as resp:
                    await resp.read()
                    statuses[resp.status] += 1
            except aiohttp.ClientError as exc:
                statuses[-1] += 1  # a connection the gateway never answered
                print("view failed:", exc)

        await asyncio.gather(*(view() for _ in range(views)))
    return statuses


def _burst_process(url: str, views: int, host: str, barrier, results) -> None:
    barrier.wait()
    results.put(dict(asyncio.run(burst(url, views, host))))


def bursts(url: str, processes: int, views: int, host: str = HOST) -> Counter[int]:
    """``processes`` client processes, ``views`` page views each, all released together."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    clients = [
        ctx.Process(target=_burst_process, args=(url, views, host, barrier, results))
        for _ in range(processes)
    ]
    for client in clients:
        client.start()
    total: Counter[int] = Counter()
    for _ in clients:
        total.update(results.get(timeout=240))
    for client in clients:
        client.join(30)
    return total


async def check(stack: Stack, enterprise: str, statuses: Counter[int], views: int) -> None:
    print(f"{views} views: {dict(statuses)}")
    assert -1 not in statuses, statuses
    assert set(statuses) <= {200, 402, 503}, statuses
    assert statuses[200] == BALANCE, statuses
    assert statuses[402] + statuses[503] == views - BALANCE, statuses
    metrics = await stack.gateway.metrics()
    assert sample(metrics, "pvgate_requests_total", outcome="fail_open") == 0
    assert sample(metrics, "pvgate_requests_total", outcome="overloaded") == statuses[503]
    assert sample(metrics, "pvgate_redis_breaker_open") == 0
    for reason in ("debit_outcome_unknown", "replay_failed"):
        assert sample(metrics, "pvgate_pv_unbilled_total", reason=reason) == 0
    assert sample(metrics, "pvgate_pv_debited_total") == BALANCE
    used = await stack.redis_used(enterprise)
    assert sum(used.values()) == BALANCE, used
    assert await stack.wait_ledger(enterprise) == {k: v for k, v in used.items() if v}
    assert "circuit breaker open" not in stack.gateway.log_text()


@pytest.mark.timeout(240)
async def test_a_burst_of_5000_page_views_is_metered_to_the_pv(
    servers, origin, tmp_path: Path
) -> None:
    stack = start_stack(tmp_path, servers)
    try:
        await stack.gateway.wait_ready()
        await stack.onboard("ent-burst", HOST, origin, BALANCE)
        await asyncio.sleep(1.5)  # every worker has the approved site (polled each second)
        # The clients in a process of their own: in this one they would slow the origin,
        # which shares its event loop, until granted views waited longer than the pool's
        # connect timeout for one of its 64 connections, and were answered 503.
        statuses = await asyncio.to_thread(bursts, stack.gateway.url, 1, 5000)
        await check(stack, "ent-burst", statuses, 5000)
        assert origin.hits["/"] == statuses[200]
    finally:
        stack.stop()


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_20000_page_views_from_four_client_processes(servers, origin, tmp_path: Path):
    stack = start_stack(tmp_path, servers)
    try:
        await stack.gateway.wait_ready()
        await stack.onboard("ent-storm", HOST, origin, BALANCE)
        await asyncio.sleep(1.5)
        statuses = await asyncio.to_thread(bursts, stack.gateway.url, 4, 5000)
        await check(stack, "ent-storm", statuses, 20_000)
        assert origin.hits["/"] == statuses[200]
    finally:
        stack.stop()
