"""UsageRecorder: aggregation, entry format, splitting, the flush loop, Redis down and back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY
from redis.crc import key_slot
from redis.exceptions import RedisError

from metering.keys import USAGE_STREAM
from metering.scripts import RedisClient
from metering.usage import ROWS_PER_ENTRY, UsageRecorder
from pvgate.embedded import RedisClusterServers, RedisServer
from tests.conftest import cluster_client, single_client


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def redis_errors() -> float:
    return sum(sample("pvgate_redis_errors_total", kind=k) for k in ("connection", "timeout"))


async def entries(client: RedisClient) -> list[dict[str, str]]:
    reply: Any = await client.xrange(USAGE_STREAM)  # decoded: [(id, {field: value}), ...]
    return [fields for _, fields in reply]


def rows_of(entry: dict[str, str]) -> list[tuple[str, str, int]]:
    return [tuple(row) for row in orjson.loads(entry["rows"])]


async def wait_for(predicate, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_records_aggregate_into_one_entry_without_net_zero_rows(client):
    recorder = UsageRecorder(client, "gw-a")
    for _ in range(500):
        recorder.record("e1", "b1")
    recorder.record("e1", "b2", 7)
    recorder.record("e1", "b2", -2)
    recorder.record("e2", "b1", 3)
    recorder.record("e2", "b1", -3)  # given back entirely: nothing to tell billing
    recorder.record("e3", "g", -4)  # more given back than taken in this interval
    entries_before = sample("pvgate_usage_entries_total")
    before = int(time.time() * 1000)

    assert await recorder.flush() == 1

    after = int(time.time() * 1000)
    [entry] = await entries(client)
    assert set(entry) == {"gateway_id", "seq", "ts", "rows"}
    assert entry["gateway_id"] == "gw-a"
    assert entry["seq"] == "1"
    assert before <= int(entry["ts"]) <= after
    assert sorted(rows_of(entry)) == [("e1", "b1", 500), ("e1", "b2", 5), ("e3", "g", -4)]
    assert sample("pvgate_usage_entries_total") - entries_before == 1
    assert sample("pvgate_usage_flush_lag_seconds") == 0.0


async def test_seq_counts_entries_and_an_empty_flush_writes_nothing(client):
    recorder = UsageRecorder(client, "gw-seq")
    assert await recorder.flush() == 0
    recorder.record("e", "b")
    assert await recorder.flush() == 1
    recorder.record("e", "b", 2)
    recorder.record("e", "b", -2)
    assert await recorder.flush() == 0  # net zero: no entry, no seq used
    recorder.record("e", "b", 2)
    assert await recorder.flush() == 1
    written = await entries(client)
    assert [(e["seq"], rows_of(e)) for e in written] == [
        ("1", [("e", "b", 1)]),
        ("2", [("e", "b", 2)]),
    ]
    assert int(written[0]["ts"]) <= int(written[1]["ts"])


async def test_a_large_cut_is_split_into_entries_with_consecutive_seqs(client):
    recorder = UsageRecorder(client, "gw-big")
    recorded = [(f"e{i % 37}", f"b{i}", i + 1) for i in range(2 * ROWS_PER_ENTRY + 500)]
    for enterprise, bucket, n in recorded:
        recorder.record(enterprise, bucket, n)

    assert await recorder.flush() == 3

    written = await entries(client)
    assert [e["seq"] for e in written] == ["1", "2", "3"]
    assert [len(rows_of(e)) for e in written] == [ROWS_PER_ENTRY, ROWS_PER_ENTRY, 500]
    assert sorted(row for e in written for row in rows_of(e)) == sorted(recorded)
    assert len({e["ts"] for e in written}) == 1  # one cut, one clock reading


async def test_aclose_flushes_what_was_recorded(client):
    recorder = UsageRecorder(client, "gw-close", interval=3600)
    await recorder.start()
    recorder.record("e", "b", 4)
    await asyncio.sleep(0.05)
    assert await entries(client) == []  # the loop is still waiting out its interval
    await recorder.aclose()
    assert [rows_of(e) for e in await entries(client)] == [[("e", "b", 4)]]
    assert recorder.pending_entries == 0


async def test_the_background_task_flushes_every_interval(client):
    recorder = UsageRecorder(client, "gw-loop", interval=0.05)
    await recorder.start()
    try:
        recorder.record("e", "b")

        async def written(count: int) -> bool:
            return len(await entries(client)) >= count

        await wait_for(lambda: written(1), 5)
        recorder.record("e", "b", 2)
        await wait_for(lambda: written(2), 5)
    finally:
        await recorder.aclose()
    assert [(e["seq"], rows_of(e)) for e in await entries(client)] == [
        ("1", [("e", "b", 1)]),
        ("2", [("e", "b", 2)]),
    ]


@dataclass
class Fragile:
    client: RedisClient
    victim: RedisServer  # the server that holds the usage stream
    cluster: RedisClusterServers | None = None

    def restart(self) -> None:
        self.victim.start()  # same port; no AOF, so the stream starts empty
        if self.cluster:
            self.cluster.wait_ok()

    async def aclose(self) -> None:
        # A test that failed with the victim down: bring it back and reach it once, else
        # the cluster client leaks the nodes it dropped and the next test fails on warnings.
        if self.victim.process is None or self.victim.process.poll() is not None:
            self.restart()
            await wait_for(self.reachable, 15)
        await self.client.aclose()

    async def reachable(self) -> bool:
        try:
            await self.client.exists(USAGE_STREAM)
        except RedisError:
            return False
        return True


@pytest.fixture(params=["single", "cluster"])
async def fragile(request) -> AsyncIterator[Fragile]:
    """Servers of their own, which the test may kill and start again."""
    if request.param == "single":
        server = RedisServer().start()
        rig = Fragile(single_client(server), server)
        yield rig
        await rig.aclose()
        server.stop()
        return
    cluster = RedisClusterServers().start()
    client = await cluster_client(cluster).initialize()
    rig = Fragile(client, cluster.node_for_slot(key_slot(USAGE_STREAM.encode())), cluster)
    yield rig
    await rig.aclose()
    cluster.stop()


async def flush_until_written(recorder: UsageRecorder, seconds: float = 15) -> int:
    """A restarted cluster node may refuse a little longer than cluster_state says."""
    total = 0

    async def written() -> bool:
        nonlocal total
        total += await recorder.flush()
        return recorder.pending_entries == 0

    await wait_for(written, seconds)
    return total


@pytest.mark.timeout(120)
async def test_a_failed_entry_is_retried_with_its_seq_before_newer_ones(fragile):
    # 0.5 s instead of the default 1 s: the test waits out several failed flushes.
    recorder = UsageRecorder(fragile.client, "gw-down", timeout=0.5)
    recorder.record("e", "b", 1)
    fragile.victim.kill()
    errors_before = redis_errors()

    assert await recorder.flush() == 0
    assert recorder.pending_entries == 1
    recorder.record("e", "b", 2)
    assert await recorder.flush() == 0
    assert recorder.pending_entries == 2
    assert sample("pvgate_usage_flush_lag_seconds") > 0
    assert redis_errors() > errors_before

    fragile.restart()
    recorder.record("e", "b", 3)
    assert await flush_until_written(recorder) == 3
    written = await entries(fragile.client)
    assert [(e["seq"], rows_of(e)) for e in written] == [
        ("1", [("e", "b", 1)]),
        ("2", [("e", "b", 2)]),
        ("3", [("e", "b", 3)]),
    ]
    assert sample("pvgate_usage_flush_lag_seconds") == 0.0


@pytest.mark.timeout(120)
async def test_a_full_buffer_drops_the_oldest_entries_and_counts_their_pv(fragile):
    # A shorter timeout and a tiny buffer, so that the buffer fills within the test.
    recorder = UsageRecorder(fragile.client, "gw-full", timeout=0.5, max_pending_rows=3)
    fragile.victim.kill()
    dropped_before = sample("pvgate_usage_dropped_total")
    recorder.record("e1", "b1", 5)
    recorder.record("e1", "b2", -2)
    assert await recorder.flush() == 0  # seq 1: 2 rows pending, within the bound
    assert sample("pvgate_usage_dropped_total") == dropped_before

    recorder.record("e2", "b1", 1)
    recorder.record("e2", "b2", 1)
    assert await recorder.flush() == 0  # seq 2: 4 rows pending, so seq 1 goes

    assert sample("pvgate_usage_dropped_total") - dropped_before == 7  # |5| + |-2|
    assert recorder.pending_entries == 1
    fragile.restart()
    assert await flush_until_written(recorder) == 1
    written = await entries(fragile.client)
    assert [(e["seq"], sorted(rows_of(e))) for e in written] == [
        ("2", [("e2", "b1", 1), ("e2", "b2", 1)])
    ]
