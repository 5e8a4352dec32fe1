"""The deadlines of a Meter's rounds on one timer (docs/architecture.md §10)."""

from __future__ import annotations

import asyncio
import time

from metering.deadline import Calling, Deadlines, Waiters
from metering.errors import MeterTimeout
from metering.looplag import LoopLag

TIMEOUT = 0.05


def waiters(results: list[object], n: int = 1) -> Waiters:
    def collect(result: object) -> bool:
        results.append(result)
        return True

    return [Calling(collect) for _ in range(n)]


async def watch(limit: float = 1.0) -> tuple[Deadlines, LoopLag, list[object]]:
    loop = asyncio.get_running_loop()
    lag = LoopLag(loop)
    fired: list[object] = []
    return Deadlines(TIMEOUT, limit, lag, loop, fired.append), lag, fired


async def test_rounds_not_answered_fire_once_each_and_answered_ones_never():
    deadlines, lag, fired = await watch()
    answered: list[object] = []
    late: list[object] = []
    first = deadlines.start([("e", waiters(answered, 2))], 1, "first")
    second = deadlines.start([("e", waiters(late, 3))], 1, "second")
    await asyncio.sleep(0.01)
    third = deadlines.start([("f", waiters(late))], 1, "third")
    first.cancel()  # its reply came
    await asyncio.sleep(TIMEOUT * 4)
    lag.close()
    assert fired == ["second", "third"]
    assert answered == []
    assert len(late) == 4
    assert all(isinstance(r, MeterTimeout) for r in late)
    assert second.fired
    assert third.fired
    assert not first.fired
    assert deadlines.waiting == 0  # nothing left to watch: the timer is not armed again
    deadlines.close()


async def test_a_round_answered_before_its_time_leaves_the_watch_at_the_next_check():
    deadlines, lag, fired = await watch()
    results: list[object] = []
    for n in range(100):
        deadlines.start([("e", waiters(results))], 1, n).cancel()
    assert deadlines.waiting == 100
    await asyncio.sleep(TIMEOUT * 2)
    lag.close()
    assert deadlines.waiting == 0
    assert fired == []
    assert results == []
    deadlines.close()


async def test_the_loops_own_stall_is_not_counted_as_redis_time():
    """The loop stalls for four timeouts right after the round is written: the round is not
    failed at the first check, only once it has waited ``timeout`` of the loop's free time."""
    deadlines, lag, fired = await watch()
    await asyncio.sleep(0.02)  # the lag monitor ticks
    started = time.monotonic()
    deadlines.start([("e", waiters([]))], 1, "stalled")
    asyncio.get_running_loop().call_soon(time.sleep, TIMEOUT * 4)  # the loop is busy
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the stall is over
    assert fired == []  # the check that was due during the stall waited for Redis time
    while not fired:
        await asyncio.sleep(0.005)
    lag.close()
    deadlines.close()
    waited = time.monotonic() - started
    assert waited >= TIMEOUT * 4 + TIMEOUT * 0.5, waited


async def test_past_the_limit_it_fires_whatever_the_lag_and_runs_on_limit():
    """A stall longer than ``limit``: all of the round's wait was the loop's own, and it
    fails all the same (a hung Redis behind a saturated loop must still fail)."""
    deadlines, lag, fired = await watch(limit=0.15)
    await asyncio.sleep(0.02)
    limits: list[str] = []
    deadlines.start([("e", waiters([]))], 1, "hung", on_limit=lambda: limits.append("limit"))
    asyncio.get_running_loop().call_soon(time.sleep, 0.3)
    await asyncio.sleep(0.1)
    await asyncio.sleep(0.02)  # on_limit runs in a turn after the one that fired
    lag.close()
    deadlines.close()
    assert fired == ["hung"]
    assert limits == ["limit"]
