"""``wait_replicas``: a debit round ends with ``WAIT``; its pages are granted only once
enough replicas hold the debits, and a short ``WAIT`` gives the PV back.

Both ways a round travels are covered: the Meter's own connection (after `prepare`) and
the redis-py client (before it, as while the connection is made again).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from metering import BalanceStore, Meter, MeterTimeout, metrics
from pvgate.embedded import RedisServer
from tests.helpers import package


def short_waits() -> float:
    metrics.flush()
    return REGISTRY.get_sample_value("pvgate_redis_errors_total", {"kind": "wait_short"}) or 0.0


@pytest.fixture(scope="module")
def replicated() -> Iterator[RedisServer]:
    """A master with one replica in sync."""
    with RedisServer() as master, RedisServer(replica_of=master) as replica:
        deadline = time.monotonic() + 10
        while master.client().info("replication")["connected_slaves"] != 1:
            assert time.monotonic() < deadline, "the replica did not connect"
            time.sleep(0.01)
        replica.client().ping()
        yield master


def client_of(server: RedisServer) -> Redis:
    return Redis(host=server.host, port=server.port, decode_responses=True)


@pytest.mark.parametrize("own_connection", [True, False])
async def test_granted_once_a_replica_holds_the_debits(replicated, own_connection):
    client = client_of(replicated)
    enterprise = f"w-ok-{own_connection}"
    await BalanceStore(client).credit(enterprise, package("p", 100))
    # A deadline of 2 s rather than 50 ms: WAIT gets half of it, and a replica on a busy
    # test machine may take longer than 25 ms to acknowledge.
    meter = Meter(client, wait_replicas=1, timeout=2.0)
    if own_connection:
        await meter.prepare()
    before = short_waits()
    try:
        results = await asyncio.gather(*(meter.debit(enterprise) for _ in range(30)))
    finally:
        await meter.aclose()
    assert all(r.granted for r in results)
    assert short_waits() == before
    assert (await BalanceStore(client).snapshot(enterprise)).available == 70
    await client.aclose()


@pytest.mark.parametrize("own_connection", [True, False])
async def test_too_few_replicas_fail_the_round_and_give_the_pv_back(redis_node, own_connection):
    """No replica at all: WAIT 1 returns 0 after its timeout (half the debit deadline)."""
    client = client_of(redis_node)
    enterprise = f"w-short-{own_connection}"
    await BalanceStore(client).credit(enterprise, package("p", 100))
    # 200 ms, not 50: WAIT gets half of the deadline, and the round must end by WAIT's
    # short answer (naming the replicas) rather than by the deadline firing first.
    meter = Meter(client, wait_replicas=1, timeout=0.2)
    if own_connection:
        await meter.prepare()
    before = short_waits()
    results = await asyncio.gather(
        *(meter.debit(enterprise) for _ in range(10)), return_exceptions=True
    )
    await meter.aclose()  # and with it the give-backs
    assert all(isinstance(r, MeterTimeout) for r in results), results
    assert "replicas" in str(results[0])
    assert short_waits() > before
    assert (await BalanceStore(client).snapshot(enterprise)).available == 100
    await client.aclose()
