"""Charging one page view: the Meter behind a blocked-state cache and a circuit breaker.

    charge(enterprise) → DebitResult (granted: its bucket; refused: why) | Unmetered
                         | Unavailable

* A refusal is cached per enterprise for ``blocked_cache`` seconds: page views and the
  other requests of a blocked enterprise are refused without a Redis call, and a top-up
  is seen within that time.
* Only real Redis failures reach here as errors (the Meter's deadline rule: see
  `metering.meter`); they open a circuit breaker, so a dead Redis costs one timeout, not
  one per request.  ``fail_closed`` then answers Unavailable (503).  ``fail_open`` serves
  (Unmetered) up to an allowance per enterprise.  Views that never reached Redis (refused
  by the open breaker, or queued behind a failed round) are debited later, "replayed": a
  background task probes Redis every ``replay_probe_ms`` while views wait, and replays
  them as soon as it answers, whether or not more page views arrive.  Views whose debit
  timed out are counted unbilled instead — they may have been debited, and billing them
  again could charge twice; reconciliation books what Redis counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from typing import Final

from gateway.metrics import (
    BREAKER_OPEN,
    PV_DEBITED,
    PV_GIVEN_BACK,
    PV_OUTCOME_UNKNOWN,
    PV_REPLAYED,
    PV_UNBILLED,
)
from gateway.settings import FailureSection
from metering import BalanceStore, Meter, MeterError, MeterNotSent
from metering.buckets import Refusal
from metering.deadline import Waiter
from metering.meter import REFUSED, DebitResult
from metering.usage import UsageRecorder

log: Final = logging.getLogger("pvgate.charging")


# A plain class: compiled, a dataclass's generated __init__ would run interpreted
# (docs/architecture.md §4 "Compiled").
class Unmetered:
    """Served without a debit (fail-open); ``replay``: queued to be debited later."""

    __slots__ = ("replay",)

    def __init__(self, replay: bool) -> None:
        self.replay = replay


class _Unavailable:
    """Not served: Redis is failing and no allowance is left, or fail-closed."""


UNAVAILABLE: Final = _Unavailable()
_REPLAY, _UNBILLED = Unmetered(replay=True), Unmetered(replay=False)
# A debit's own result is the charge: granted (from its bucket) or refused (and why).
Charge = DebitResult | Unmetered | _Unavailable


class CircuitBreaker:
    """Opens after ``failures`` failures in a row; lets one probe through per ``reset``."""

    def __init__(self, failures: int, reset: float) -> None:
        self._threshold, self._reset = failures, reset
        self._failures = 0
        self._retry_at = 0.0  # while open: when the next probe may go

    @property
    def open(self) -> bool:
        return self._failures >= self._threshold

    def allow(self) -> bool:
        if not self.open:
            return True
        now = time.monotonic()
        if now < self._retry_at:
            return False
        self._retry_at = now + self._reset  # this caller is the probe
        return True

    def success(self) -> None:
        if self.open:
            log.warning("Redis answers again: circuit breaker closed")
            BREAKER_OPEN.set(0)
        self._failures = 0

    def failure(self) -> None:
        self._failures += 1
        if self._failures == self._threshold:
            log.error("Redis failing: circuit breaker open")
            BREAKER_OPEN.set(1)
        if self.open:
            self._retry_at = time.monotonic() + self._reset


class Charger:
    def __init__(
        self,
        meter: Meter,
        store: BalanceStore,
        usage: UsageRecorder,
        failure: FailureSection,
        *,
        blocked_cache: float,
    ) -> None:
        self._meter, self._store, self._usage = meter, store, usage
        self._fail_open = failure.mode == "fail_open"
        self._allowance = failure.allowance_per_enterprise
        self._breaker = CircuitBreaker(failure.breaker_failures, failure.breaker_reset_ms / 1000)
        self._blocked_cache = blocked_cache
        self._blocked: dict[str, tuple[Refusal, float]] = {}
        self._served_unmetered: Counter[str] = Counter()  # toward the allowance
        self._to_replay: Counter[str] = Counter()
        self._probe_interval = failure.replay_probe_ms / 1000
        self._replayer: asyncio.Task[None] | None = None
        self._giving_back: set[asyncio.Task[None]] = set()
        self._last_error: MeterError | None = None

    def blocked(self, enterprise_id: str) -> Refusal | None:
        """The cached refusal of an enterprise, if still fresh."""
        if not self._blocked:
            return None  # the usual case: no lookup
        entry = self._blocked.get(enterprise_id)
        if entry is None:
            return None
        if entry[1] < time.monotonic():
            del self._blocked[enterprise_id]
            return None
        return entry[0]

    def charge_for(self, enterprise_id: str, waiter: Waiter) -> Charge | None:
        """Charge one page view: the charge now (a cached refusal, the breaker open), or
        None, and the Meter delivers its result to ``waiter``, for `settle`."""
        reason = self.blocked(enterprise_id)
        if reason is not None:
            return REFUSED[reason]
        if not self._breaker.allow():
            return self._degraded(enterprise_id, replay=True)
        self._meter.debit_for(enterprise_id, waiter)
        return None

    def settle(self, enterprise_id: str, result: DebitResult | MeterError) -> Charge:
        """The charge for a debit that came back (granted, refused, or failed)."""
        if not isinstance(result, DebitResult):  # a compiled class: the cheaper check
            # Every waiter of a failed batch gets the same exception object: the breaker
            # counts failed Redis calls, not the views that were waiting on one.
            if result is not self._last_error:
                self._last_error = result
                self._breaker.failure()
            log.debug("debit for %s failed: %s", enterprise_id, result)
            if isinstance(result, MeterNotSent):  # never reached Redis: bill it later
                return self._degraded(enterprise_id, replay=True)
            PV_OUTCOME_UNKNOWN.inc()
            return self._degraded(enterprise_id, replay=False)
        self._breaker.success()
        if self._served_unmetered and not self._to_replay:
            self._served_unmetered.clear()  # the outage is over: allowances start afresh
        if result.granted:
            PV_DEBITED.inc()  # its usage was recorded by the Meter, per bucket and round
            return result
        assert result.reason is not None
        self._blocked[enterprise_id] = (result.reason, time.monotonic() + self._blocked_cache)
        return result

    def _degraded(self, enterprise_id: str, *, replay: bool) -> Charge:
        if not self._fail_open or self._served_unmetered[enterprise_id] >= self._allowance:
            return UNAVAILABLE
        self._served_unmetered[enterprise_id] += 1
        if replay:
            self._to_replay[enterprise_id] += 1
            if self._replayer is None:
                self._replayer = asyncio.create_task(self._replay_when_back())
            return _REPLAY
        PV_UNBILLED.labels("debit_outcome_unknown").inc()
        return _UNBILLED

    def not_delivered(self, enterprise_id: str, charge: Unmetered) -> None:
        """A view served fail-open was not delivered after all: it is not to be debited
        (if its replay has already run, its PV stays taken — replays do not say which
        bucket paid for which view)."""
        if charge.replay and self._to_replay[enterprise_id] > 0:
            self._to_replay[enterprise_id] -= 1
            if not self._to_replay[enterprise_id]:
                del self._to_replay[enterprise_id]

    def give_back_soon(self, enterprise_id: str, bucket_id: str) -> asyncio.Task[None]:
        """`give_back` in the background (the caller is a callback, not a coroutine)."""
        task = asyncio.get_running_loop().create_task(self.give_back(enterprise_id, bucket_id))
        self._giving_back.add(task)
        task.add_done_callback(self._giving_back.discard)
        return task

    async def give_back(self, enterprise_id: str, bucket_id: str) -> None:
        """The origin failed to deliver a counted view: its PV goes back to its bucket."""
        if await self._meter.give_back(enterprise_id, bucket_id):
            PV_GIVEN_BACK.inc()
            self._usage.record(enterprise_id, bucket_id, -1)

    async def aclose(self) -> None:
        """At shutdown: finish the give-backs, stop waiting for Redis, replay once more."""
        if self._giving_back:
            await asyncio.gather(*self._giving_back, return_exceptions=True)
        if self._replayer is not None:
            self._replayer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replayer
            self._replayer = None
        if self._to_replay and await self._store.ping():
            await self._replay()

    async def _replay_when_back(self) -> None:
        """While views wait to be replayed: probe Redis, and replay as soon as it answers."""
        try:
            while self._to_replay:
                # A PING first, every time: a replay sent to a Redis that hangs might run
                # when it wakes up, and could then be neither billed nor retried.
                if await self._store.ping():
                    self._breaker.success()
                    await self._replay()
                if self._to_replay:
                    await asyncio.sleep(self._probe_interval)
            self._served_unmetered.clear()
        finally:
            self._replayer = None

    async def _replay(self) -> None:
        """Debit what fail-open served unbilled, one call per enterprise."""
        while self._to_replay:
            enterprise_id, count = self._to_replay.popitem()
            try:
                debit = await self._store.debit(enterprise_id, count)
            except MeterError as exc:
                self._breaker.failure()
                if isinstance(exc, MeterNotSent):
                    self._to_replay[enterprise_id] += count  # certainly not debited
                    return
                # It may have been debited all the same: billing it again could charge
                # twice, so these views are counted as unbilled instead.
                PV_OUTCOME_UNKNOWN.inc(count)
                PV_UNBILLED.labels("replay_failed").inc(count)
                log.warning("replay of %d PV for %s failed: %s", count, enterprise_id, exc)
                return
            for bucket_id, n in debit.takes:
                self._usage.record(enterprise_id, bucket_id, n)
            PV_REPLAYED.inc(debit.granted)
            PV_DEBITED.inc(debit.granted)
            if count > debit.granted:
                PV_UNBILLED.labels(f"replay_{debit.reason}").inc(count - debit.granted)
