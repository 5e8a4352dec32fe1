"""Meter: the async client the gateway calls once per page view.

Debits for one enterprise that arrive in the same event-loop turn are coalesced into one
``debit_pv`` call for n PV (at most ``max_batch``); the calls for different enterprises
go out pipelined in one round trip.  The script grants the first k of n and the Meter
hands those k grants to the first k waiters in arrival order, so batching never
oversells.  Every failure reaches the waiters as a `MeterError` within ``timeout``.

A flush sends at most ``max_pipeline`` enterprises per pipeline, and the pipelines of
one flush go out concurrently on their own connections, so that Redis runs one group
while the client is still building or reading another.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis import exceptions as redis_errors

from metering import scripts
from metering.buckets import Debit, Refusal
from metering.errors import MeterError
from metering.keys import enterprise_keys
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
    ) -> None:
        if timeout <= 0 or max_batch < 1 or max_pipeline < 1:
            raise ValueError("timeout, max_batch and max_pipeline must be positive")
        self._client = client
        self._timeout = timeout
        self._max_batch = max_batch
        self._max_pipeline = max_pipeline
        self._pending: dict[str, Waiters] = {}
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def debit(self, enterprise_id: str) -> DebitResult:
        """Take one PV for a page view of ``enterprise_id``.

        Raises `MeterError` (unavailable, timeout, script) when Redis cannot answer.
        """
        enterprise_keys(enterprise_id)  # validates (cached) before anything is queued
        loop = asyncio.get_running_loop()
        future: asyncio.Future[DebitResult] = loop.create_future()
        waiters = self._pending.get(enterprise_id)
        if waiters is None:
            self._pending[enterprise_id] = [future]
        else:
            waiters.append(future)
        if not self._scheduled:
            self._scheduled = True
            # Runs after every callback already ready in this turn has queued its debit.
            loop.call_soon(self._flush)
        return await future

    async def prepare(self) -> None:
        """Load the scripts the Meter calls (on every master), before the first request."""
        for script in (scripts.DEBIT_PV, scripts.GIVE_BACK_PV):
            await self._client.script_load(script.source)

    async def aclose(self) -> None:
        """Wait for the batches in flight (and the give-backs of abandoned grants)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, {}
        items = list(pending.items())
        for start in range(0, len(items), self._max_pipeline):
            self._spawn(self._send(items[start : start + self._max_pipeline]))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, group: Sequence[tuple[str, Waiters]]) -> None:
        calls: list[tuple[str, int]] = []  # (enterprise, n) per script call, in order
        for enterprise_id, waiters in group:
            for start in range(0, len(waiters), self._max_batch):
                n = min(self._max_batch, len(waiters) - start)
                calls.append((enterprise_id, n))
                METER_BATCH_SIZE.observe(n)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                replies = await self._execute(calls)
        except (TimeoutError, redis_errors.RedisError) as exc:
            error = scripts.translate(exc, f"debit of {len(calls)} batches")
            for _, waiters in group:
                _fail(waiters, error)
            return
        finally:
            METER_DURATION.observe(time.perf_counter() - started)
        index = 0
        for enterprise_id, waiters in group:
            count = -(-len(waiters) // self._max_batch)
            self._resolve(enterprise_id, waiters, replies[index : index + count])
            index += count

    async def _execute(self, calls: Sequence[tuple[str, int]]) -> list[Any]:
        replies = await self._pipeline(calls)
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
            await self._client.script_load(scripts.DEBIT_PV.source)
            again = await self._pipeline([calls[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline(self, calls: Sequence[tuple[str, int]]) -> list[Any]:
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
        except (TimeoutError, redis_errors.RedisError) as exc:
            scripts.translate(exc, f"give back {k} PV to {enterprise_id}/{bucket_id}")
            return 0
        return int(back)


def _fail(waiters: Waiters, error: Exception) -> None:
    for future in waiters:
        if not future.done():
            future.set_exception(error)


__all__ = ["REFUSED", "DebitResult", "Meter", "MeterError"]
