"""The Meter: batching, the zero boundary, SCRIPT FLUSH mid-stream (test 4), abandoned grants."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from metering import BalanceStore, Meter, MeterTimeout, metrics
from metering.buckets import Refusal
from metering.deadline import Calling
from metering.keys import USAGE_STREAM
from metering.meter import DebitResult
from metering.usage import UsageRecorder
from pvgate.embedded import RedisServer
from tests.helpers import gift, package


def nodes_of(servers) -> list[RedisServer]:
    return [servers] if isinstance(servers, RedisServer) else servers.nodes


def sample(name: str, **labels: str) -> float:
    metrics.flush()  # what the Meter counted locally
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_first_waiters_are_granted_at_the_zero_boundary(client):
    """10 waiters, 5 PV, batches of 3: the first 5 in arrival order get the PV."""
    await BalanceStore(client).credit("edge", gift("g", 2))
    await BalanceStore(client).credit("edge", package("p", 3, at=1))
    meter = Meter(client, max_batch=3)
    await meter.prepare()  # as the gateway does: on a single node, its own connection
    calls_before = sample("pvgate_meter_batch_size_count")
    results = await asyncio.gather(*(meter.debit("edge") for _ in range(10)))
    await meter.aclose()
    assert [r.bucket_id for r in results] == ["g", "g", "p", "p", "p"] + [None] * 5
    assert [r.reason for r in results[5:]] == [Refusal.EXHAUSTED] * 5
    assert sample("pvgate_meter_batch_size_count") - calls_before == 4  # ceil(10 / 3) calls


async def test_waiters_of_different_enterprises_share_one_flush(client):
    store = BalanceStore(client)
    for i in range(20):
        await store.credit(f"e{i}", gift("g", 1))
    meter = Meter(client)
    await meter.prepare()
    rounds_before = sample("pvgate_meter_duration_seconds_count")
    results = await asyncio.gather(*(meter.debit(f"e{i % 20}") for i in range(40)))
    await meter.aclose()
    assert sum(r.granted for r in results) == 20
    assert all(results[i].granted and not results[i + 20].granted for i in range(20))
    flushes = sample("pvgate_meter_duration_seconds_count") - rounds_before
    # One pipelined round, on a cluster split across the masters concurrently.
    assert flushes == 1


async def test_abandoned_grant_goes_back(client):
    store = BalanceStore(client)
    await store.credit("gone", gift("g", 5))
    meter = Meter(client)
    await meter.prepare()
    waiting = asyncio.ensure_future(meter.debit("gone"))
    await asyncio.sleep(0)  # queued, not yet flushed
    waiting.cancel()
    await asyncio.sleep(0)
    await meter.aclose()
    assert (await store.snapshot("gone")).buckets[0].used == 0


async def test_script_flush_mid_stream_fails_no_debit(client, servers):
    """Test 4: SCRIPT FLUSH on every node while debits stream: none fails, none is lost."""
    store = BalanceStore(client)
    enterprises = [f"flush-{i}" for i in range(8)]
    for e in enterprises:
        await store.credit(e, package("p", 10**6))
    meter = Meter(client)
    await meter.prepare()
    admins = [Redis(host=n.host, port=n.port) for n in nodes_of(servers)]
    noscript_before = sample("pvgate_redis_errors_total", kind="noscript")
    stop = asyncio.Event()

    async def flusher() -> int:
        flushes = 0
        while not stop.is_set():
            await asyncio.gather(*(a.script_flush() for a in admins))
            flushes += 1
            await asyncio.sleep(0.002)
        return flushes

    flushing = asyncio.create_task(flusher())
    granted = 0
    for wave in range(60):
        results = await asyncio.gather(
            *(meter.debit(enterprises[(wave + i) % 8]) for i in range(100))
        )
        granted += sum(r.granted for r in results)
    stop.set()
    await meter.aclose()
    assert await flushing > 10
    for a in admins:
        await a.aclose()
    assert granted == 6000
    used = 0
    for e in enterprises:
        used += (await store.snapshot(e)).buckets[0].used
    assert used == 6000
    assert sample("pvgate_redis_errors_total", kind="noscript") > noscript_before


async def test_a_stalled_event_loop_is_not_a_late_redis(client):
    """The round's reply waits in the socket while the loop is blocked far past the 50 ms
    deadline: the deadline counts Redis time only, so every debit is granted."""
    await BalanceStore(client).credit("stall", package("p", 1000))
    meter = Meter(client)  # the default 50 ms deadline
    await meter.prepare()
    await meter.debit("stall")  # opens the connections and starts the lag monitor
    timeouts = sample("pvgate_redis_errors_total", kind="timeout")
    debits = [asyncio.ensure_future(meter.debit("stall")) for _ in range(100)]
    for _ in range(3):
        await asyncio.sleep(0)  # the round is flushed and written
    time.sleep(0.3)  # noqa: ASYNC251 - the whole loop stalls, as under a burst
    results = await asyncio.gather(*debits)
    await meter.aclose()
    assert all(r.granted for r in results)
    assert sample("pvgate_redis_errors_total", kind="timeout") == timeouts
    assert (await BalanceStore(client).snapshot("stall")).buckets[0].used == 101


async def test_a_hung_redis_fails_even_while_the_loop_lags():
    """A lagging loop extends the deadline, but never past the reply limit (1 s)."""
    with RedisServer() as server:
        client = Redis(host=server.host, port=server.port, decode_responses=True)
        await BalanceStore(client).credit("hung", package("p", 1000))
        meter = Meter(client)
        await meter.prepare()
        assert (await meter.debit("hung")).granted
        stop = asyncio.Event()

        async def hog() -> None:  # 30 ms of every 35 ms busy
            while not stop.is_set():
                time.sleep(0.03)  # noqa: ASYNC251 - a busy loop
                await asyncio.sleep(0.005)

        hogging = asyncio.create_task(hog())
        assert server.process is not None
        server.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(MeterTimeout):
                await meter.debit("hung")
            waited = time.monotonic() - started
        finally:
            server.process.send_signal(signal.SIGCONT)
            stop.set()
            await hogging
        await meter.aclose()
        await client.aclose()
    assert 0.05 < waited < 1.0 + 0.5, waited


async def test_a_caller_failing_on_its_result_keeps_no_other_waiting(client, caplog):
    """`debit_for` delivers to each waiter in place: one that raises is logged, and the
    waiters after it in the same round still get their results."""
    await BalanceStore(client).credit("calls", gift("g", 3))
    meter = Meter(client)
    await meter.prepare()
    got: list[DebitResult] = []

    def broken(result: object) -> bool:
        raise RuntimeError("a caller's bug")

    everyone = asyncio.Event()

    def collect(result: DebitResult) -> bool:
        got.append(result)
        if len(got) == 3:
            everyone.set()
        return True

    for function in (collect, broken, collect, collect):
        meter.debit_for("calls", Calling(function))
    await asyncio.wait_for(everyone.wait(), 5)
    await meter.aclose()
    assert [r.bucket_id for r in got] == ["g", "g", None]  # the broken one took a PV
    assert "a debit's caller failed on its result" in caplog.text


async def test_a_caller_gone_when_its_grant_arrives_gives_it_back(client):
    """A waiter answering False (its caller went away) returns the PV it was granted."""
    store = BalanceStore(client)
    await store.credit("left", gift("g", 5))
    meter = Meter(client)
    await meter.prepare()
    answered = asyncio.Event()

    def gone(result: object) -> bool:
        answered.set()
        return False

    meter.debit_for("left", Calling(gone))
    await asyncio.wait_for(answered.wait(), 5)
    await meter.aclose()  # waits for the give-back
    assert (await store.snapshot("left")).buckets[0].used == 0


async def test_usage_is_recorded_per_bucket_and_round_without_the_given_back(client):
    """The Meter tells its usage recorder which bucket paid for the PV it handed out: one
    count per bucket of a round; a PV whose waiter was gone (given back) is not in it."""
    store = BalanceStore(client)
    await store.credit("usage-meter", gift("g", 2))
    await store.credit("usage-meter", package("p", 10, at=1))
    recorder = UsageRecorder(client, "gw-meter")
    meter = Meter(client, usage=recorder)
    await meter.prepare()
    got: list[DebitResult] = []
    everyone = asyncio.Event()

    def collect(result: DebitResult) -> bool:
        got.append(result)
        if len(got) == 5:
            everyone.set()
        return True

    def gone(result: object) -> bool:
        return False

    for function in (collect, gone, collect, collect, collect, collect):
        meter.debit_for("usage-meter", Calling(function))
    await asyncio.wait_for(everyone.wait(), 5)
    await meter.aclose()  # waits for the give-back of the one that was gone
    assert [r.bucket_id for r in got] == ["g", "p", "p", "p", "p"]
    assert await recorder.flush() == 1
    reply: Any = await client.xrange(USAGE_STREAM)
    assert len(reply) == 1
    assert sorted(map(tuple, orjson.loads(reply[0][1]["rows"]))) == [
        ("usage-meter", "g", 1),
        ("usage-meter", "p", 4),
    ]
    snapshot = {b.id: b.used for b in (await store.snapshot("usage-meter")).buckets}
    assert snapshot == {"g": 1, "p": 4}  # what billing is told is what Redis counts
