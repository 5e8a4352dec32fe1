"""A failover of Sentinel-managed Redis during page views, with and without ``wait_replicas``.

One master, two replicas and three sentinels, each with a password (`SentinelGroup`), a
fresh group per test.  A gateway worker finds the master through the sentinels; clients
load pages; mid-load the master fails over, one of two ways:

``failover``
    ``SENTINEL FAILOVER``: the old master stays up and writable until the sentinels turn
    it into a replica, seconds after the switch; what it takes after the promotion is
    forgotten.  The gateway holds writes from the replica's selection and moves to the
    promoted one when it is announced (metering/sentinel.py);
``crash``
    ``kill -9`` of the master: what had not reached a replica is gone.

Afterwards the test compares the pages served (200) with the PV ``used`` on the new
master, prints both, and asserts that no PV was taken for nothing and that pages are
served again.  With ``wait_replicas = 1`` a page is served only once a replica holds its
debit, and the sentinels promote the replica furthest ahead: no served page may be
missing from ``used``.  With 0, replication is asynchronous and the test reports how many
were lost (on loopback, with the hold, usually none).

Settings changed from the defaults, and why: ``[failure] mode = "fail_closed"`` — in
fail_open the gateway serves through a Redis outage by design and bills later, so
served vs used would measure the replay rather than what a failover forgets.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from metering import BalanceStore
from metering.connection import RedisSettings
from pvgate.embedded_sentinel import MASTER, SentinelGroup
from tests.e2e.harness import HTML_HEADERS, Origin, site, start_gateway
from tests.helpers import package

CLIENTS = 16
BEFORE_S = 1.5  # load before the failover


@pytest.fixture
def group() -> Iterator[SentinelGroup]:
    started = SentinelGroup(replicas=2).start()
    yield started
    started.stop()


def redis_section(group: SentinelGroup) -> dict[str, object]:
    return {
        "sentinels": group.addresses,
        "sentinel_master": MASTER,
        "sentinel_password": group.sentinel_password,
        "password": group.password,
    }


async def load(url: str, host: str, statuses: Counter[int], stop: asyncio.Event) -> None:
    headers = {**HTML_HEADERS, "Host": host}
    async with aiohttp.ClientSession() as session:

        async def one() -> None:
            while not stop.is_set():
                try:
                    async with session.get(f"{url}/", headers=headers) as resp:
                        await resp.read()
                        statuses[resp.status] += 1
                except aiohttp.ClientError:
                    statuses[-1] += 1
                    await asyncio.sleep(0.01)

        await asyncio.gather(*(one() for _ in range(CLIENTS)))


async def served_again(statuses: Counter[int], since: float, within: float = 30.0) -> float:
    """Seconds from ``since`` until pages are served again (a 200 in a 0.25 s window)."""
    while time.monotonic() - since < within:
        before = statuses[200]
        await asyncio.sleep(0.25)
        if statuses[200] > before:
            return time.monotonic() - since
    raise AssertionError(f"nothing served {within} s after the failover: {dict(statuses)}")


async def used_now(group: SentinelGroup, enterprise: str) -> int:
    settings = RedisSettings(**{k: tuple(v) if isinstance(v, list) else v  # type: ignore[arg-type]
                                for k, v in redis_section(group).items()})  # fmt: skip
    client = await settings.open()
    try:
        # 5 s, not the default 1 s: just after a failover the client first asks the
        # sentinels for the new master and connects to it.
        snapshot = await BalanceStore(client, timeout=5).snapshot(enterprise)
    finally:
        await client.aclose()
    return sum(b.used for b in snapshot.buckets)


# The suite's 300 s, not 180 s: the timeout covers the Sentinel group's setup too, and on a
# machine with slow system calls one run took over 180 s (its own waits are bounded).
@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["failover", "crash"])
@pytest.mark.parametrize("wait_replicas", [0, 1])
async def test_a_failover_during_page_views(
    group: SentinelGroup, how: str, wait_replicas: int, origin: Origin, tmp_path: Path
) -> None:
    enterprise, host = "ent-failover", "failover.test"
    settings = RedisSettings(**{k: tuple(v) if isinstance(v, list) else v  # type: ignore[arg-type]
                                for k, v in redis_section(group).items()})  # fmt: skip
    client = await settings.open()
    await BalanceStore(client).credit(enterprise, package("p", 10_000_000))
    await client.aclose()
    gateway = start_gateway(
        tmp_path,
        {
            "workers": 1,
            "redis": {**redis_section(group), "wait_replicas": wait_replicas},
            "failure": {"mode": "fail_closed"},
            "site": [site(origin, enterprise, host)],
        },
    )
    statuses: Counter[int] = Counter()
    try:
        await gateway.wait_ready()
        stop = asyncio.Event()
        driving = asyncio.create_task(load(gateway.url, host, statuses, stop))
        await asyncio.sleep(BEFORE_S)
        started = time.monotonic()
        await asyncio.to_thread(group.failover if how == "failover" else group.crash_master)
        failover_s = time.monotonic() - started
        recovered_s = await served_again(statuses, started)
        before_last = Counter(statuses)
        await asyncio.sleep(1.0)
        after = statuses - before_last  # a second of load once pages are served again
        stop.set()
        await driving
    finally:
        gateway.stop()
    used = await used_now(group, enterprise)
    served = statuses[200]
    lost = max(0, served - used)
    print(
        f"\n{how}, wait_replicas={wait_replicas}: the sentinels agreed after {failover_s:.2f} s, "
        f"pages served again after {recovered_s:.2f} s; served {served}, used {used} on the "
        f"new master: {lost} served pages lost their debit; responses {dict(statuses)}"
    )
    assert after[200] > 0, f"not serving steadily after the failover: {dict(after)}"
    # Every PV taken was for a page served or refused during the failover, never more.
    assert used <= served + statuses[503], (used, dict(statuses))
    if wait_replicas:
        assert used >= served, f"{served - used} served pages lost their debit"
