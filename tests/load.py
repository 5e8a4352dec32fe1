"""Worker processes that hammer the Meter, for the oversell tests.

Each process runs its own event loop, client and Meter, waits at a barrier so that all
processes fire together, and reports what its callers were told.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections import Counter
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from metering import Meter, MeterError

Target = tuple[str, list[tuple[str, int]]]  # ("single" | "cluster", [(host, port), ...])


def connect(target: Target) -> Redis | RedisCluster:
    kind, nodes = target
    if kind == "single":
        ((host, port),) = nodes
        return Redis(host=host, port=port, decode_responses=True, max_connections=64)
    return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes], decode_responses=True)


async def _storm(target: Target, enterprise: str, callers: int, barrier: Any) -> dict[str, int]:
    client = connect(target)
    await client.ping()
    meter = Meter(client)
    await meter.prepare()
    outcomes: Counter[str] = Counter()

    async def one() -> None:
        try:
            result = await meter.debit(enterprise)
        except MeterError as exc:
            outcomes[f"error:{type(exc).__name__}"] += 1
            return
        outcomes["granted" if result.granted else f"refused:{result.reason}"] += 1

    await asyncio.get_running_loop().run_in_executor(None, barrier.wait)
    await asyncio.gather(*(one() for _ in range(callers)))
    await meter.aclose()
    await client.aclose()
    return dict(outcomes)


def _worker(target: Target, enterprise: str, callers: int, barrier: Any, results: Any) -> None:
    results.put(asyncio.run(_storm(target, enterprise, callers, barrier)))


def debit_storm(target: Target, enterprise: str, *, processes: int, callers: int) -> Counter[str]:
    """``processes`` OS processes x ``callers`` coroutines, one PV debit each; all outcomes."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes)
    results = ctx.Queue()
    workers = [
        ctx.Process(target=_worker, args=(target, enterprise, callers, barrier, results))
        for _ in range(processes)
    ]
    for w in workers:
        w.start()
    total: Counter[str] = Counter()
    for _ in workers:
        total.update(results.get(timeout=120))
    for w in workers:
        w.join(30)
        assert w.exitcode == 0, f"worker exited with {w.exitcode}"
    return total
