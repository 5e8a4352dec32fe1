"""Meter: the async client the gateway calls once per page view.

Debits for one enterprise that arrive in the same event-loop turn are coalesced into one
``debit_pv`` call for n PV (at most ``max_batch``); the calls for different enterprises
go out pipelined in one round trip.  The script grants the first k of n and the Meter
hands those k grants to the first k waiters in arrival order, so batching never
oversells.  Every failure reaches the waiters as a `MeterError` within ``timeout``.

On a single node a round goes out on the Meter's own pipelined connection
(`metering.pipe`): one write, its replies parsed as they arrive, no task per round.  On
a cluster, or while that connection is being (re)made, a round goes through the client:
at most ``max_pipeline`` enterprises per pipeline, the pipelines of one flush
concurrently, so that Redis runs one group while the client is still building or reading
another.  At most ``max_inflight`` rounds are in flight: the debits that arrive meanwhile
wait and go out together as the next round, so the batch grows with the load by itself
(the Nagle idea) and a busy gateway makes far fewer, larger script calls.  A second
round overlaps the first only when it is wide (a quarter of ``max_pipeline``
enterprises or more), where overlapping pays.  Otherwise the next round waits for the
reply: on one enterprise's hot path, overlapping made rounds a third smaller — a third
more script calls for Redis and more writes and reads for the worker — for no gain in
latency, as the loop reads the reply and the next page views in the same turn.

The deadline measures Redis, not the gateway (docs/architecture.md §10).  A round's
``timeout`` starts when the round is written to Redis — time a debit spent queued in the
worker before that is bounded by the gateway's admission control, never by declaring Redis
failed — and the time the event loop itself stalled meanwhile (`metering.looplag`) is
not counted: a saturated loop that reads a reply late is overload, not a failing Redis.
So a debit fails only for a real Redis failure:

* the connection is refused or reset, or the client raises (`MeterUnavailable`);
* Redis answers with an error (`ScriptFailed`);
* the reply is late while the loop is not lagging: ``timeout`` of Redis time has passed
  since the round was written (`MeterTimeout`) — or, whatever the lag, ``reply_limit``
  of wall time (20 × ``timeout``, at least 1 s), so that a hung Redis behind a saturated
  loop still fails;
* a round failed just before this debit would have been sent (`MeterNotSent`: it was
  never sent, so no PV was taken).

A reply that arrives is always used: its grants go to the waiters still waiting, and the
PV granted to waiters already told "timeout" are given back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any, Final

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from metering import scripts
from metering.buckets import Refusal
from metering.deadline import Deadline, Deadlines, Waiter, Waiters, fail
from metering.errors import MeterError, MeterNotSent, MeterTimeout
from metering.keys import enterprise_keys
from metering.looplag import LoopLag
from metering.metrics import METER_BATCH_SIZE, METER_DURATION
from metering.pipe import PipeTarget, RedisPipe, pack, pack_head
from metering.replies import debit_takes
from metering.rounds import Calls, ClientRounds, Sent, waited
from metering.scripts import RedisClient
from metering.sentinel import SentinelMaster
from metering.usage import UsageRecorder

log: Final = logging.getLogger("pvgate.meter")


# A plain class: compiled, a dataclass's generated __init__ would run interpreted
# (docs/architecture.md §4 "Compiled").
class DebitResult:
    """The outcome of one page view's debit: the bucket it came from, or why refused."""

    __slots__ = ("bucket_id", "granted", "reason")

    def __init__(
        self, granted: bool, bucket_id: str | None = None, reason: Refusal | None = None
    ) -> None:
        self.granted = granted
        self.bucket_id = bucket_id
        self.reason = reason

    def __repr__(self) -> str:
        return f"DebitResult({self.granted}, {self.bucket_id!r}, {self.reason})"


REFUSED: Final = {reason: DebitResult(False, None, reason) for reason in Refusal}
_RECONNECT_AFTER: Final = 0.2  # seconds between attempts to make the pipe again
# Read once: an interpreted module's attribute is a lookup by name, on every reply.
_NOSCRIPT: Final = redis_errors.NoScriptError
_READONLY: Final = redis_errors.ReadOnlyError


class _Awaited(Waiter):
    """The waiter of `Meter.debit`: a future."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[DebitResult]) -> None:
        super().__init__()
        self.future = future

    def deliver(self, result: DebitResult | MeterError) -> bool:
        if self.future.done():  # cancelled: the grant, if any, is given back
            return False
        if isinstance(result, DebitResult):
            self.future.set_result(result)
        else:
            self.future.set_exception(result)
        return True


class _Round:
    """One round of debits in flight; ``open`` while it holds one of the in-flight slots."""

    __slots__ = ("open",)

    def __init__(self) -> None:
        self.open = True


class Meter:
    """Batches single-PV debits; works with `redis.asyncio.Redis` and `RedisCluster`.

    Given a ``usage`` recorder, the Meter tells it which bucket paid for the PV it took
    and handed to a waiter — one record per bucket and round, not one per page view; a PV
    it gives back at once (its waiter gone) is not recorded.
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        timeout: float = 0.05,
        max_batch: int = 256,
        max_pipeline: int = 64,
        max_inflight: int = 2,
        wait_replicas: int = 0,
        usage: UsageRecorder | None = None,
    ) -> None:
        if timeout <= 0 or min(max_batch, max_pipeline, max_inflight) < 1:
            raise ValueError("timeout, max_batch, max_pipeline and max_inflight must be positive")
        self._client = client
        self._usage = usage  # told which bucket paid, per bucket and round
        # WAIT returns within half the deadline, so that a replica that lags only shows.
        self._wait = (wait_replicas, max(1, int(timeout * 500))) if wait_replicas else None
        self._rounds = ClientRounds(client, self._wait)
        self._wait_packed = pack("WAIT", *self._wait) if self._wait else b""  # ends each round
        self._timeout = timeout
        self._max_batch = max_batch
        self._max_pipeline = max_pipeline
        self._pending: dict[str, Waiters] = {}
        self._max_inflight = max_inflight
        self._inflight = 0
        self._wide = max(1, max_pipeline // 4)
        self._reply_limit = max(1.0, 20 * timeout)
        # A single node: the Meter's own pipelined connection (see the module docstring).
        self._target = PipeTarget.of(client) if isinstance(client, Redis) else None
        self._pipe: RedisPipe | None = None
        self._use_pipe = False  # set by prepare()
        self._reconnecting: asyncio.Task[None] | None = None
        self._next_connect = 0.0
        self._packed: dict[str, bytes] = {}
        self._packed_n = [b"$%d\r\n%d\r\n" % (len(b"%d" % n), n) for n in range(max_batch + 1)]
        self._lag: LoopLag | None = None
        self._deadlines: Deadlines | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of the first debit
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        if isinstance(client, SentinelMaster):
            client.on_switch(self._master_moved)

    async def debit(self, enterprise_id: str) -> DebitResult:
        """Take one PV for a page view of ``enterprise_id``.

        Raises `MeterError` (unavailable, timeout, script) when Redis cannot answer.  If
        the caller is cancelled meanwhile, a PV granted to it goes back.
        """
        waiter = _Awaited(asyncio.get_running_loop().create_future())
        self.debit_for(enterprise_id, waiter)
        return await waiter.future

    def debit_for(self, enterprise_id: str, waiter: Waiter) -> None:
        """`debit` for callers driven by callbacks rather than coroutines: the Meter calls
        ``waiter.deliver`` with the `DebitResult` or the `MeterError`, once, in the turn of
        the loop that reads the reply (docs/architecture.md §4)."""
        waiters = self._pending.get(enterprise_id)
        if waiters is not None:  # queued already, and so validated
            waiters.append(waiter)
        else:
            if enterprise_id not in self._packed:  # the packed ones were validated already
                enterprise_keys(enterprise_id)  # before anything is queued
            self._pending[enterprise_id] = [waiter]
        if not self._scheduled and (
            self._inflight == 0
            # A narrow round waits for the one in flight to come back, and grows (see
            # the module docstring): for Redis's verdict, which the deadline rule bounds.
            or (self._inflight < self._max_inflight and len(self._pending) >= self._wide)
        ):
            self._scheduled = True
            # Runs after every callback already ready in this turn has queued its debit.
            self._running_loop().call_soon(self._flush)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """The loop, looked up once: on Python 3.11 each ``get_running_loop`` is a
        ``getpid`` system call."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def _master_moved(self) -> None:
        """A failover: the pipe's server is no master now; connect to the new one at once."""
        if self._pipe is not None:
            self._pipe.abort()
        self._next_connect = 0.0

    async def prepare(self) -> None:
        """Load the scripts the Meter calls (on every master), before the first request;
        on a single node, open the Meter's own connection, used from then on."""
        for script in (scripts.DEBIT_PV, scripts.GIVE_BACK_PV):
            await self._client.script_load(script.source)
        if self._target is not None:
            self._use_pipe = True  # and keep it: made again whenever it breaks
            await self._connect()

    async def aclose(self) -> None:
        """Wait for the batches in flight (and the give-backs of abandoned grants)."""
        while self._tasks or (self._pipe is not None and self._pipe.pending):
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            else:  # rounds on the pipe end by a reply or, at the reply limit, an abort
                await asyncio.sleep(0.002)
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        if self._deadlines is not None:
            self._deadlines.close()
            self._deadlines = None
        if self._lag is not None:
            self._lag.close()
            self._lag = None
        self._loop = None
        if self._pipe is not None:
            pipe, self._pipe = self._pipe, None
            await pipe.aclose()

    # Rounds ------------------------------------------------------------------------------

    def _flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        if self._deadlines is None:  # the first round, in the running loop
            loop = self._running_loop()
            self._lag = LoopLag(loop)
            self._deadlines = Deadlines(
                self._timeout, self._reply_limit, self._lag, loop, self._timed_out
            )
        pending, self._pending = self._pending, {}
        items = list(pending.items())
        self._inflight += 1
        round_ = _Round()
        pipe = self._pipe
        if pipe is not None and not pipe.closed and len(items) <= self._max_pipeline:
            self._send_on_pipe(pipe, items, round_)
            return
        if self._use_pipe:
            self._reconnect()
        size = self._max_pipeline
        groups = [items[start : start + size] for start in range(0, len(items), size)]
        self._spawn(self._send_all(groups, round_))

    def _calls(self, group: Sequence[tuple[str, Waiters]]) -> Calls:
        calls: Calls = []
        for enterprise_id, waiters in group:
            for start in range(0, len(waiters), self._max_batch):
                n = min(self._max_batch, len(waiters) - start)
                calls.append((enterprise_id, n))
                METER_BATCH_SIZE.observe(n)
        return calls

    def _deadline(self, group: Sequence[tuple[str, Waiters]], calls: int, round_: _Round, *,
                  on_limit: Any = None) -> Deadline:  # fmt: skip
        assert self._deadlines is not None
        return self._deadlines.start(group, calls, round_, on_limit)

    def _timed_out(self, round_: Any) -> None:
        self._end_round(round_, failed=True)

    def _send_on_pipe(
        self, pipe: RedisPipe, group: Sequence[tuple[str, Waiters]], round_: _Round
    ) -> None:
        """The usual round: one write on the pipe; the replies resolve it in a callback."""
        calls = self._calls(group)
        parts: list[bytes] = []
        for enterprise_id, n in calls:
            parts.append(self._debit_head(enterprise_id))
            parts.append(self._packed_n[n])
        parts.append(self._wait_packed)
        packed = b"".join(parts)
        started = time.perf_counter()
        # A round still unanswered at the reply limit means a stuck connection: drop it.
        deadline = self._deadline(group, len(calls), round_, on_limit=pipe.abort)

        def done(result: list[Any] | BaseException) -> None:
            deadline.cancel()
            METER_DURATION.observe(time.perf_counter() - started)
            durable = True
            if not isinstance(result, BaseException):
                result, durable = self._checked(pipe, result)
            if isinstance(result, BaseException):
                if not deadline.fired:
                    error = (
                        result
                        if isinstance(result, MeterNotSent)
                        else scripts.translate(result, f"debit of {len(calls)} batches")
                    )
                    for _, waiters in group:
                        fail(waiters, error)
                self._end_round(round_, failed=True)
            elif any(isinstance(r, _NOSCRIPT) for r in result):
                self._spawn(self._recover(group, calls, (result, durable), round_))
            else:
                self._resolve_group(group, result, durable)
                self._end_round(round_, failed=False)

        pipe.send(packed, len(calls) + (self._wait is not None), done)

    def _checked(
        self, pipe: RedisPipe, replies: list[Any]
    ) -> tuple[list[Any] | MeterNotSent, bool]:
        """The scripts' replies without WAIT's, and whether WAIT saw its replicas; for a
        failover seen in them, the error instead."""
        durable = self._wait is None or waited(replies.pop(), self._wait[0])
        if any(isinstance(r, _READONLY) for r in replies):
            # This node is a replica now.  The scripts did not run; the pipe connects
            # again, to the master the sentinels name.
            pipe.abort()
            return MeterNotSent("Redis is read-only: the master has moved"), durable
        return replies, durable

    async def _recover(
        self, group: Sequence[tuple[str, Waiters]], calls: Calls, sent: Sent, r: _Round
    ) -> None:
        """NOSCRIPT on the pipe: reload, re-send those calls through the client."""
        try:
            sent = await self._rounds.retry_noscript(calls, sent)
        except Exception as exc:  # no waiter may be left hanging
            error = scripts.translate(exc, f"debit of {len(calls)} batches")
            for _, waiters in group:
                fail(waiters, error)
            self._end_round(r, failed=True)
            return
        self._resolve_group(group, *sent)
        self._end_round(r, failed=False)

    def _debit_head(self, enterprise_id: str) -> bytes:
        """EVALSHA debit_pv for one enterprise, packed once, all but its last argument (n:
        ``self._packed_n[n]``)."""
        head = self._packed.get(enterprise_id)
        if head is None:
            if len(self._packed) >= 65536:
                self._packed.clear()
            keys = enterprise_keys(enterprise_id)
            head = self._packed[enterprise_id] = pack_head(
                8, "EVALSHA", scripts.DEBIT_PV.sha, 4, *keys
            )
        return head

    def _reconnect(self) -> None:
        """Make the pipe again in the background (the client carries rounds meanwhile)."""
        if self._reconnecting is not None or time.monotonic() < self._next_connect:
            return
        self._reconnecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        assert self._target is not None
        try:
            async with asyncio.timeout(max(1.0, self._timeout)):
                self._pipe = await RedisPipe.open(self._target)
        except (OSError, TimeoutError, redis_errors.RedisError) as exc:
            self._next_connect = time.monotonic() + _RECONNECT_AFTER
            log.debug("Meter connection to Redis not made: %s", exc)
        finally:
            self._reconnecting = None

    async def _send_all(self, groups: list[list[tuple[str, Waiters]]], round_: _Round) -> None:
        failed = True
        try:
            if len(groups) == 1:
                failed = await self._send(groups[0], round_)
            else:  # a wide round: groups overlap on pooled connections
                failed = any(await asyncio.gather(*(self._send(g, round_) for g in groups)))
        finally:
            self._end_round(round_, failed)

    def _end_round(self, round_: _Round, failed: bool) -> None:
        """A round came back, or Redis failed it: its slot goes to the debits queued."""
        if not round_.open:
            return  # failed at its deadline already; a late reply changes nothing here
        round_.open = False
        self._inflight -= 1
        if failed and self._pending:
            # Redis just failed a round: the debits that queued behind it fail with it,
            # never sent, instead of waiting for a verdict of their own.
            pending, self._pending = self._pending, {}
            error = MeterNotSent("Redis failed the previous round of debits")
            for waiters in pending.values():
                fail(waiters, error)
        elif self._pending and not self._scheduled:
            # What queued while this round was in flight goes now, as one bigger round.
            self._scheduled = True
            self._running_loop().call_soon(self._flush)

    def _spawn(self, coro: Any) -> None:
        task = self._running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, group: Sequence[tuple[str, Waiters]], round_: _Round) -> bool:
        """One pipelined round through the client; True if Redis failed it."""
        calls = self._calls(group)
        started = time.perf_counter()
        # The waiters learn of a timeout at the deadline itself, not when the client has
        # finished cancelling its work (a cluster client may take a while to unwind).
        deadline = self._deadline(group, len(calls), round_)
        try:
            # The round itself may outlive its waiters' deadline (up to _reply_limit): a
            # reply that comes late still reaches _resolve, which gives back the PV it
            # took for waiters already told "timeout" — instead of Redis keeping them.
            async with asyncio.timeout(self._reply_limit):
                sent = await self._rounds.retry_noscript(calls, await self._rounds.send(calls))
        except Exception as exc:  # whatever the client raised, no waiter may be left hanging
            deadline.cancel()
            if not deadline.fired:
                error = scripts.translate(exc, f"debit of {len(calls)} batches")
                for _, waiters in group:
                    fail(waiters, error)
            return True
        finally:
            deadline.cancel()
            METER_DURATION.observe(time.perf_counter() - started)
        self._resolve_group(group, *sent)
        return False

    # Replies -----------------------------------------------------------------------------

    def _resolve_group(
        self, group: Sequence[tuple[str, Waiters]], replies: Sequence[Any], durable: bool = True
    ) -> None:
        if not durable:
            # WAIT saw fewer replicas than wanted: a failover could forget these debits,
            # so their pages are not served as paid for, and _resolve gives the PV back
            # (docs/architecture.md §10).
            assert self._wait is not None
            error = MeterTimeout(f"fewer than {self._wait[0]} replicas confirmed the debits")
            for _, waiters in group:
                fail(waiters, error)
        index = 0
        for enterprise_id, waiters in group:
            count = -(-len(waiters) // self._max_batch)
            self._resolve(enterprise_id, waiters, replies[index : index + count])
            index += count

    def _resolve(self, enterprise_id: str, waiters: Waiters, replies: Sequence[Any]) -> None:
        """Hand the grants of this enterprise's calls to its waiters in arrival order."""
        takes: list[tuple[str, int]] = []
        reason = ""  # why the last call that was refused some took no more
        error: Exception | None = None
        for reply in replies:
            if isinstance(reply, Exception):
                error = error or scripts.translate(reply, f"debit {enterprise_id}")
            else:
                these, why = debit_takes(reply)
                takes += these
                if why:
                    reason = why
        position = 0
        abandoned: dict[str, int] = {}
        usage = self._usage
        for bucket_id, n in takes:
            result = DebitResult(True, bucket_id)
            kept = n
            for waiter in waiters[position : position + n]:
                if not waiter.answer(result):  # the caller went away: its PV goes back
                    abandoned[bucket_id] = abandoned.get(bucket_id, 0) + 1
                    kept -= 1
            position += n
            if usage is not None and kept:
                usage.record(enterprise_id, bucket_id, kept)
        rest = waiters[position:]
        if error is not None:
            fail(rest, error)
        elif rest:
            refused = REFUSED[Refusal(reason) if reason else Refusal.EXHAUSTED]
            for waiter in rest:
                waiter.answer(refused)
        for bucket_id, k in abandoned.items():
            self._spawn(self.give_back(enterprise_id, bucket_id, k))

    async def give_back(self, enterprise_id: str, bucket_id: str, k: int = 1) -> int:
        """Return k PV to the bucket they came from; the PV returned (0 on failure)."""
        keys = enterprise_keys(enterprise_id)
        try:
            async with asyncio.timeout(max(self._timeout, 1.0)):
                back = await scripts.call(self._client, scripts.GIVE_BACK_PV, keys, (bucket_id, k))
        except Exception as exc:  # a failed give-back is counted, never raised
            scripts.translate(exc, f"give back {k} PV to {enterprise_id}/{bucket_id}")
            return 0
        return int(back)


__all__ = ["REFUSED", "DebitResult", "Meter", "MeterError"]
