"""The supervisor and its workers: a worker never outlives its supervisor."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from pvgate.embedded import free_port
from tests.e2e.harness import redis_config


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


async def test_workers_stop_when_the_supervisor_is_killed(redis_node, gateways):
    gw = gateways({"redis": redis_config(redis_node), "workers": 2})
    await gw.wait_ready()
    children = gw.workers()
    assert len(children) == 2
    gw.process.send_signal(signal.SIGKILL)
    gw.process.wait(10)
    deadline = time.monotonic() + 20  # SIGTERM: each finishes within its shutdown grace
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert not any(alive(pid) for pid in children), "a worker outlived its supervisor"


async def test_a_worker_that_keeps_dying_is_restarted_with_back_off(redis_node, gateways):
    gw = gateways({"redis": redis_config(redis_node)})
    await gw.wait_ready()
    gaps = []
    for _ in range(4):
        (victim,) = gw.workers()
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        while True:  # the next worker appears
            now = gw.workers()
            if now and now[0] != victim:
                break
            assert time.monotonic() - killed < 30, "no worker started again"
            await asyncio.sleep(0.05)
        gaps.append(time.monotonic() - killed)
    assert gaps[0] < 1.0  # at once the first time
    assert gaps[2] >= 1.8  # then 1, 2, 4 … seconds while it keeps dying
    assert gaps[3] >= 3.8
    assert gw.process.poll() is None
    assert "starting another in" in gw.log_text()


async def test_a_worker_that_dies_at_start_up_stops_the_gateway_with_its_error(gateways):
    dead = free_port()  # no Redis Cluster node answers there
    gw = gateways({"redis": {"cluster_nodes": [f"127.0.0.1:{dead}"]}})
    assert await asyncio.to_thread(gw.process.wait, 60) == 1
    text = gw.log_text()
    assert "failed at start-up" in text
    assert "RedisClusterException" in text or "ConnectionError" in text, text[-1500:]
