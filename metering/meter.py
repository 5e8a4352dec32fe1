"""Meter: the async client the gateway calls once per page view.

Debits for one enterprise that arrive in the same event-loop turn are coalesced into one
``debit_pv`` call for n PV (at most ``max_batch``); the calls for different enterprises
go out pipelined in one round trip.  The script grants the first k of n and the Meter
hands those k grants to the first k waiters in arrival order, so batching never
oversells.  Every failure reaches the waiters as a `MeterError` within ``timeout``.

A flush sends at most ``max_pipeline`` enterprises per pipeline, and the pipelines of
one flush go out concurrently on their own connections, so that Redis runs one group
while the client is still building or reading another.  At most ``max_inflight`` rounds
are in flight: the debits that arrive meanwhile wait and go out together as the next
round, so the batch grows with the load by itself (the Nagle idea) and a busy gateway
makes far fewer, larger script calls; a second round overlaps the first only when it
is wide (a quarter of ``max_pipeline`` enterprises or more).

The deadline measures Redis, not the gateway (docs/architecture.md §5).  A round's
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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import ConnectionPool, Redis

from metering import scripts
from metering.buckets import Debit, Refusal
from metering.errors import MeterError, MeterNotSent
from metering.keys import enterprise_keys
from metering.looplag import LoopLag
from metering.metrics import METER_BATCH_SIZE, METER_DURATION, REDIS_ERRORS
from metering.scripts import RedisClient
from metering.store import parse_debit

Waiters = list["asyncio.Future[DebitResult]"]


@dataclass(frozen=True, slots=True)
class DebitResult:
    """The outcome of one page view's debit: the bucket it came from, or why refused."""

    granted: bool
    bucket_id: str | None = None
    reason: Refusal | None = None


REFUSED = {reason: DebitResult(False, None, reason) for reason in Refusal}
# A flush racing the reload again is retried; past this many, those waiters get an error.
_NOSCRIPT_ATTEMPTS = 5


class Meter:
    """Batches single-PV debits; works with `redis.asyncio.Redis` and `RedisCluster`."""

    def __init__(
        self,
        client: RedisClient,
        *,
        timeout: float = 0.05,
        max_batch: int = 256,
        max_pipeline: int = 64,
        max_inflight: int = 2,
    ) -> None:
        if timeout <= 0 or min(max_batch, max_pipeline, max_inflight) < 1:
            raise ValueError("timeout, max_batch, max_pipeline and max_inflight must be positive")
        self._client = client
        self._timeout = timeout
        self._max_batch = max_batch
        self._max_pipeline = max_pipeline
        self._pending: dict[str, Waiters] = {}
        self._max_inflight = max_inflight
        self._inflight = 0
        self._wide = max(1, max_pipeline // 4)
        self._reply_limit = max(1.0, 20 * timeout)
        # A single node with one round at a time: the Meter keeps a connection of its own.
        self._pool: ConnectionPool | None = None
        if isinstance(client, Redis):
            self._pool = client.connection_pool
        self._conn: Any = None
        self._conn_busy = False
        self._lag: LoopLag | None = None
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def debit(self, enterprise_id: str) -> DebitResult:
        """Take one PV for a page view of ``enterprise_id``.

        Raises `MeterError` (unavailable, timeout, script) when Redis cannot answer.
        """
        return await self.debit_nowait(enterprise_id)

    def debit_nowait(self, enterprise_id: str) -> asyncio.Future[DebitResult]:
        """`debit` as a future, for callers driven by callbacks rather than coroutines."""
        enterprise_keys(enterprise_id)  # validates (cached) before anything is queued
        loop = asyncio.get_running_loop()
        future: asyncio.Future[DebitResult] = loop.create_future()
        waiters = self._pending.get(enterprise_id)
        if waiters is None:
            self._pending[enterprise_id] = [future]
        else:
            waiters.append(future)
        if not self._scheduled and (
            self._inflight == 0
            # A second round overlaps the first only when it is wide (many enterprises),
            # where overlapping pays; a narrow one waits for a round to come back and grows.
            # Either way it waits for Redis's verdict on the rounds in flight, which the
            # deadline rule bounds.
            or (self._inflight < self._max_inflight and len(self._pending) >= self._wide)
        ):
            self._scheduled = True
            # Runs after every callback already ready in this turn has queued its debit.
            loop.call_soon(self._flush)
        return future

    async def _on_own_connection(self, calls: Sequence[tuple[str, int]]) -> list[Any]:
        """The round on the Meter's own connection to a single node: one write, n reads.

        One round at a time uses it (a round that overlaps goes through the pool), and the
        pool's checkout, health check and retry layers — half the client's cost of a call
        — are skipped.  Any failure mid-round drops the connection: its next use
        reconnects with nothing half-read on it.
        """
        assert self._pool is not None
        conn = self._conn
        if conn is None:
            try:
                conn = await self._pool.get_connection()  # type: ignore[no-untyped-call]
            except (OSError, redis_errors.ConnectionError) as exc:
                # Nothing was sent: these debits certainly did not happen.
                REDIS_ERRORS.labels("connection").inc()
                raise MeterNotSent(f"cannot connect to Redis: {exc}") from exc
            self._conn = conn
        packed = conn.pack_commands(
            ("EVALSHA", scripts.DEBIT_PV.sha, 4, *enterprise_keys(e), n) for e, n in calls
        )
        replies: list[Any] = []
        try:
            await conn.send_packed_command(packed, check_health=False)
            for _ in calls:
                try:
                    replies.append(await conn.read_response())
                except redis_errors.ResponseError as exc:  # an error reply, read in full
                    replies.append(exc)
        except BaseException:
            self._conn = None
            await conn.disconnect(nowait=True)
            await self._pool.release(conn)
            raise
        return replies

    async def prepare(self) -> None:
        """Load the scripts the Meter calls (on every master), before the first request."""
        for script in (scripts.DEBIT_PV, scripts.GIVE_BACK_PV):
            await self._client.script_load(script.source)

    async def aclose(self) -> None:
        """Wait for the batches in flight (and the give-backs of abandoned grants)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._lag is not None:
            self._lag.close()
            self._lag = None
        if self._conn is not None and self._pool is not None:
            conn, self._conn = self._conn, None
            await self._pool.release(conn)

    def _flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        if self._lag is None:
            self._lag = LoopLag(asyncio.get_running_loop())
        pending, self._pending = self._pending, {}
        items = list(pending.items())
        size = self._max_pipeline
        groups = [items[start : start + size] for start in range(0, len(items), size)]
        self._inflight += 1
        self._spawn(self._send_all(groups, _Round()))

    async def _send_all(self, groups: list[list[tuple[str, Waiters]]], round_: _Round) -> None:
        failed = True
        try:
            if len(groups) == 1 and self._pool is not None and not self._conn_busy:
                # The usual round, on a single node: on the Meter's own connection.
                self._conn_busy = True
                try:
                    failed = await self._send(groups[0], round_, direct=True)
                finally:
                    self._conn_busy = False
            elif len(groups) == 1:
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
                _fail(waiters, error)
        elif self._pending and not self._scheduled:
            # What queued while this round was in flight goes now, as one bigger round.
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(
        self, group: Sequence[tuple[str, Waiters]], round_: _Round, direct: bool = False
    ) -> bool:
        """One pipelined round for a group of enterprises; True if Redis failed it."""
        calls: list[tuple[str, int]] = []  # (enterprise, n) per script call, in order
        for enterprise_id, waiters in group:
            for start in range(0, len(waiters), self._max_batch):
                n = min(self._max_batch, len(waiters) - start)
                calls.append((enterprise_id, n))
                METER_BATCH_SIZE.observe(n)
        started = time.perf_counter()
        assert self._lag is not None
        # The waiters learn of a timeout at the deadline itself, not when the client has
        # finished cancelling its work (a cluster client may take a while to unwind).
        deadline = _Deadline(
            group,
            len(calls),
            self._timeout,
            self._reply_limit,
            self._lag,
            on_fire=lambda: self._end_round(round_, failed=True),
        )
        try:
            # The round itself may outlive its waiters' deadline (up to _reply_limit): a
            # reply that comes late still reaches _resolve, which gives back the PV it
            # took for waiters already told "timeout" — instead of Redis keeping them.
            async with asyncio.timeout(self._reply_limit):
                replies = await self._execute(calls, direct)
        except Exception as exc:  # whatever the client raised, no waiter may be left hanging
            deadline.cancel()
            if not deadline.fired:
                error = (
                    exc
                    if isinstance(exc, MeterNotSent)
                    else scripts.translate(exc, f"debit of {len(calls)} batches")
                )
                for _, waiters in group:
                    _fail(waiters, error)
            return True
        finally:
            deadline.cancel()
            METER_DURATION.observe(time.perf_counter() - started)
        index = 0
        for enterprise_id, waiters in group:
            count = -(-len(waiters) // self._max_batch)
            self._resolve(enterprise_id, waiters, replies[index : index + count])
            index += count
        return False

    async def _execute(self, calls: Sequence[tuple[str, int]], direct: bool) -> list[Any]:
        replies = await self._pipeline(calls, direct)
        for _ in range(_NOSCRIPT_ATTEMPTS):
            missing = [
                i for i, r in enumerate(replies) if isinstance(r, redis_errors.NoScriptError)
            ]
            if not missing:
                break
            # The script cache was flushed (SCRIPT FLUSH, failover): those calls did not
            # run.  Load the script once (on every master of a cluster) and re-send them
            # together; the grants still go to the earliest waiters (see _resolve).
            REDIS_ERRORS.labels("noscript").inc()
            try:
                await self._client.script_load(scripts.DEBIT_PV.source)
                again = await self._pipeline([calls[i] for i in missing], direct)
            except Exception:  # those calls stay NOSCRIPT failures; the others stand
                break
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline(self, calls: Sequence[tuple[str, int]], direct: bool) -> list[Any]:
        if direct:
            return await self._on_own_connection(calls)
        if len(calls) == 1:
            # One call (one enterprise, the common case behind one site) skips the cost
            # of a Pipeline object; its error comes back in place, as a pipeline's would.
            enterprise_id, n = calls[0]
            try:
                reply = await self._client.execute_command(
                    "EVALSHA", scripts.DEBIT_PV.sha, 4, *enterprise_keys(enterprise_id), n
                )
            except redis_errors.ResponseError as exc:
                return [exc]
            return [reply]
        pipe = self._client.pipeline(transaction=False)
        for enterprise_id, n in calls:
            pipe.execute_command(
                "EVALSHA", scripts.DEBIT_PV.sha, 4, *enterprise_keys(enterprise_id), n
            )
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    def _resolve(self, enterprise_id: str, waiters: Waiters, replies: Sequence[Any]) -> None:
        """Hand the grants of this enterprise's calls to its waiters in arrival order."""
        debits: list[Debit] = []
        error: Exception | None = None
        for reply in replies:
            if isinstance(reply, Exception):
                error = error or scripts.translate(reply, f"debit {enterprise_id}")
            else:
                debits.append(parse_debit(reply))
        position = 0
        abandoned: dict[str, int] = {}
        for debit in debits:
            for bucket_id, n in debit.takes:
                result = DebitResult(True, bucket_id)
                for future in waiters[position : position + n]:
                    if future.done():  # the caller went away: its PV goes back
                        abandoned[bucket_id] = abandoned.get(bucket_id, 0) + 1
                    else:
                        future.set_result(result)
                position += n
        rest = waiters[position:]
        if error is not None:
            _fail(rest, error)
        elif rest:
            reason = next((d.reason for d in reversed(debits) if d.reason), Refusal.EXHAUSTED)
            refused = REFUSED[reason]
            for future in rest:
                if not future.done():
                    future.set_result(refused)
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


class _Round:
    """One round of debits in flight; ``open`` while it holds one of the in-flight slots."""

    __slots__ = ("open",)

    def __init__(self) -> None:
        self.open = True


class _Deadline:
    """Fails a round's waiters with a timeout once Redis, not the loop, is late (once).

    Armed when the round is written.  When it comes due it subtracts the loop's stall
    since then from the round's age: while that Redis time is under ``timeout`` (the loop
    was lagging), it waits for the rest; past ``limit`` of wall time it fires regardless.
    """

    def __init__(
        self,
        group: Sequence[tuple[str, Waiters]],
        calls: int,
        timeout: float,
        limit: float,
        lag: LoopLag,
        on_fire: Callable[[], None],
    ) -> None:
        self.group, self.calls, self.fired = group, calls, False
        self._on_fire = on_fire
        self._timeout, self._limit, self._lag = timeout, limit, lag
        self._started = time.monotonic()
        self._stall_at_start = lag.stalled()
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.Handle = self._loop.call_later(timeout, self._due)

    def _due(self) -> None:
        age = time.monotonic() - self._started
        redis_time = age - (self._lag.stalled() - self._stall_at_start)
        if redis_time < self._timeout and age < self._limit:
            self._timer = self._loop.call_later(self._timeout - redis_time, self._due)
            return
        # One more turn first: a reply read in this very turn is used rather than lost.
        self._timer = self._loop.call_soon(self._fire)

    def _fire(self) -> None:
        self.fired = True
        error = scripts.translate(TimeoutError(), f"debit of {self.calls} batches")
        for _, waiters in self.group:
            _fail(waiters, error)
        self._on_fire()

    def cancel(self) -> None:
        self._timer.cancel()


def _fail(waiters: Waiters, error: Exception) -> None:
    for future in waiters:
        if not future.done():
            future.set_exception(error)


__all__ = ["REFUSED", "DebitResult", "Meter", "MeterError"]
