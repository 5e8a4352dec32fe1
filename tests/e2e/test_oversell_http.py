"""Oversell through HTTP: 5,000 concurrent page requests, 2 workers, a balance of 1,000."""

from __future__ import annotations

import asyncio

import pytest

from metering import BalanceStore
from tests.e2e.harness import redis_config, sample, site
from tests.e2e.test_burst import bursts
from tests.helpers import gift, package


@pytest.mark.timeout(180)
async def test_exactly_the_balance_is_served(client, servers, origin, gateways):
    store = BalanceStore(client)
    for spec in (gift("g", 100), package("p1", 400, at=1), package("p2", 500, at=2)):
        await store.credit("ent-rush", spec)
    # Default settings: the 50 ms debit deadline measures Redis, not the worker's queue.
    sites = [site(origin, "ent-rush")]
    gw = gateways({"redis": redis_config(servers), "workers": 2, "site": sites})
    await gw.wait_ready()
    # The clients send from a process of their own: in the test's, they slowed the origin
    # that shares its loop until granted views outwaited the pool's connect timeout (503).
    statuses = await asyncio.to_thread(bursts, gw.url, 1, 5000, "shop.test")
    assert statuses == {200: 1000, 402: 4000}
    assert origin.hits["/"] == 1000
    snapshot = await store.snapshot("ent-rush")
    assert {b.id: b.used for b in snapshot.buckets} == {"g": 100, "p1": 400, "p2": 500}
    metrics = await gw.metrics()  # one registry across both workers
    assert sample(metrics, "pvgate_pv_debited_total") == 1000
    assert sample(metrics, "pvgate_requests_total", outcome="served") == 1000
    assert sample(metrics, "pvgate_requests_total", outcome="blocked_exhausted") == 4000
