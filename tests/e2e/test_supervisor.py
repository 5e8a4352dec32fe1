"""The supervisor and its workers: a worker never outlives its supervisor."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time

from tests.e2e.harness import redis_config


def workers_of(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


async def test_workers_stop_when_the_supervisor_is_killed(redis_node, gateways):
    gw = gateways({"redis": redis_config(redis_node), "workers": 2})
    await gw.wait_ready()
    children = workers_of(gw.process.pid)
    assert len(children) >= 2
    gw.process.send_signal(signal.SIGKILL)
    gw.process.wait(10)
    deadline = time.monotonic() + 20  # SIGTERM: each finishes within its shutdown grace
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert not any(alive(pid) for pid in children), "a worker outlived its supervisor"
