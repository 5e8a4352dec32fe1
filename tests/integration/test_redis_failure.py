"""Test 6: Redis hung or killed mid-stream.

Callers get a metering error within the Meter's timeout (measured per call), never a hang;
when a server is back on the same address (AOF on disk, so the balance survives) the same
Meter serves again, and the buckets' used counters account for every granted debit.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from redis.crc import key_slot

from metering import BalanceStore, Meter, MeterError, MeterNotSent, MeterTimeout
from metering.keys import enterprise_keys
from metering.looplag import LoopLag
from metering.scripts import RedisClient
from pvgate.embedded import RedisClusterServers, RedisServer
from tests.conftest import cluster_client, single_client
from tests.helpers import package

TIMEOUT = 0.05
# What the event loop of a busy 2-core machine adds; the error must not wait for Redis
# (whose own socket timeout is a second or more), and most must come at the timeout.
SLACK = 0.25
TYPICAL_SLACK = 0.05
ENTERPRISE = "fragile"


@dataclass
class Rig:
    client: RedisClient
    victim: RedisServer  # the server that holds ENTERPRISE
    cluster: RedisClusterServers | None = None


@pytest.fixture(params=["single", "cluster"])
async def rig(request) -> AsyncIterator[Rig]:
    if request.param == "single":
        server = RedisServer(aof=True).start()
        client: RedisClient = single_client(server)
        yield Rig(client, server)
        await client.aclose()
        server.stop()
        return
    cluster = RedisClusterServers(aof=True).start()
    client = await cluster_client(cluster).initialize()
    victim = cluster.node_for_slot(key_slot(enterprise_keys(ENTERPRISE).meta.encode()))
    yield Rig(client, victim, cluster)
    await client.aclose()
    cluster.stop()


@dataclass
class Tally:
    granted: int = 0
    errors: int = 0
    error_delays: list[float] = field(default_factory=list)

    @property
    def slowest_error(self) -> float:
        return max(self.error_delays, default=0.0)

    @property
    def typical_error(self) -> float:
        ordered = sorted(self.error_delays)
        return ordered[int(len(ordered) * 0.9) - 1] if ordered else 0.0

    error_kinds: set[str] = field(default_factory=set)
    stalls: list[float] = field(default_factory=list)


async def drive(meter: Meter, tally: Tally, until: asyncio.Event, callers: int = 16) -> None:
    """Callers debit in a loop until told to stop; every outcome is tallied and timed.

    An error's delay is counted without the time this process's event loop stalled
    meanwhile (a reconnecting cluster client can hold it): no deadline can wake a waiter
    while the loop runs something else, and the deadline measures Redis, not the loop.
    """
    lag = LoopLag(asyncio.get_running_loop())

    async def caller() -> None:
        while not until.is_set():
            started, stalled = time.perf_counter(), lag.stalled()
            try:
                result = await meter.debit(ENTERPRISE)
            except MeterError as exc:
                tally.errors += 1
                tally.error_kinds.add(type(exc).__name__)
                stall = lag.stalled() - stalled
                tally.stalls.append(stall)
                tally.error_delays.append(time.perf_counter() - started - stall)
                await asyncio.sleep(0.005)
                continue
            assert result.granted, result
            tally.granted += 1

    try:
        await asyncio.gather(*(caller() for _ in range(callers)))
    finally:
        lag.close()


async def wait_for(predicate, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@pytest.mark.timeout(120)
async def test_hung_redis_fails_within_the_timeout(rig):
    await BalanceStore(rig.client).credit(ENTERPRISE, package("p", 10**6))
    meter, tally, stop = Meter(rig.client, timeout=TIMEOUT), Tally(), asyncio.Event()
    await meter.prepare()
    driving = asyncio.create_task(drive(meter, tally, stop))
    await wait_for(lambda: tally.granted > 200, 10)
    assert rig.victim.process is not None
    rig.victim.process.send_signal(signal.SIGSTOP)
    try:
        await wait_for(lambda: tally.errors >= 50, 10)
    finally:
        rig.victim.process.send_signal(signal.SIGCONT)
    served_after = tally.granted
    await wait_for(lambda: tally.granted > served_after + 200, 15)
    stop.set()
    await driving
    await meter.aclose()
    # The round that hung times out; debits queued behind it fail at once, never sent.
    assert MeterTimeout.__name__ in tally.error_kinds
    assert tally.error_kinds <= {MeterTimeout.__name__, MeterNotSent.__name__}
    assert tally.slowest_error <= TIMEOUT + SLACK, tally.slowest_error
    assert tally.typical_error <= TIMEOUT + TYPICAL_SLACK, tally.typical_error


@pytest.mark.timeout(120)
async def test_killed_redis_fails_fast_and_the_meter_recovers(rig):
    store = BalanceStore(rig.client)
    await store.credit(ENTERPRISE, package("p", 10**6))
    meter, tally, stop = Meter(rig.client, timeout=TIMEOUT), Tally(), asyncio.Event()
    await meter.prepare()
    driving = asyncio.create_task(drive(meter, tally, stop))
    await wait_for(lambda: tally.granted > 200, 10)
    rig.victim.kill()
    await wait_for(lambda: tally.errors >= 50, 10)
    assert tally.slowest_error <= TIMEOUT + SLACK, (tally.slowest_error, max(tally.stalls))
    assert tally.typical_error <= TIMEOUT + TYPICAL_SLACK, tally.typical_error
    errors_while_down = tally.errors

    rig.victim.start()  # same port, same directory: the AOF brings the balance back
    if rig.cluster:
        rig.cluster.wait_ok()
    served_before = tally.granted
    await wait_for(lambda: tally.granted > served_before + 200, 30)
    stop.set()
    await driving
    await meter.aclose()

    assert errors_while_down >= 50
    used = (await store.snapshot(ENTERPRISE)).buckets[0].used
    # A debit that timed out may or may not have run; one that was granted always did.
    assert tally.granted <= used <= tally.granted + tally.errors
