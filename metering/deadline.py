"""The deadline of one round of debits: Redis time, not wall time (docs/architecture.md §10).

A `Deadline` is armed when its round is written to Redis.  When it comes due it takes the
event loop's stall since then (`metering.looplag`) from the round's age; while what is
left — the time the round really waited for Redis — is under ``timeout``, the loop was
lagging and it waits for the rest.  Past ``limit`` of wall time it fires whatever the
lag, so that a hung Redis behind a saturated loop still fails.  Firing hands the
round's waiters a `MeterTimeout` once; ``on_limit``, if given, runs if the round is still
unanswered at ``limit`` (the Meter drops a connection stuck that long).

A `Waiter` is one page view's debit in a round, and is its caller (the engine's exchange):
it is answered once, in place — no future, no callback scheduled for a later turn of the
loop, which a page view would pay for twice (docs/architecture.md §3, "The Meter").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from metering import scripts
from metering.looplag import LoopLag

log: Final = logging.getLogger("pvgate.meter")


class Waiter:
    """One debit waiting for its round, answered once: `deliver` gets the result (a
    DebitResult) or the round's MeterError.

    The caller is the waiter — the gateway's exchange, or the future of `Meter.debit` — so
    a page view costs no callback object.  `deliver` returns False when its caller has gone
    away (a cancelled coroutine): a PV granted to it is given back, like one granted after
    the deadline told it "timeout".
    """

    __slots__ = ("answered",)

    def __init__(self) -> None:
        self.answered = False

    def deliver(self, result: Any) -> bool:
        raise NotImplementedError

    def answer(self, result: Any) -> bool:
        """Hand over ``result``; False if this waiter was answered already or is gone."""
        if self.answered:
            return False
        self.answered = True
        try:
            return self.deliver(result)
        except Exception:  # one caller's bug must not keep the others waiting
            log.exception("a debit's caller failed on its result")
            return True


class Calling(Waiter):
    """A waiter that hands the result to a function, for callers that are not a `Waiter`
    themselves (a compiled class cannot be subclassed by an interpreted one)."""

    __slots__ = ("function",)

    def __init__(self, function: Callable[[Any], bool]) -> None:
        super().__init__()
        self.function = function

    def deliver(self, result: Any) -> bool:
        return self.function(result)


Waiters = list[Waiter]


def fail(waiters: Waiters, error: BaseException) -> None:
    for waiter in waiters:
        waiter.answer(error)


class Deadline:
    """Fails a round's waiters with a timeout once Redis, not the loop, is late (once)."""

    __slots__ = (
        "_lag",
        "_limit",
        "_loop",
        "_on_fire",
        "_on_limit",
        "_stall_at_start",
        "_started",
        "_timeout",
        "_timer",
        "calls",
        "fired",
        "group",
    )

    def __init__(
        self,
        group: Sequence[tuple[str, Waiters]],
        calls: int,
        timeout: float,
        limit: float,
        lag: LoopLag,
        loop: asyncio.AbstractEventLoop,
        on_fire: Callable[[], None],
        on_limit: Callable[[], None] | None = None,
    ) -> None:
        self.group, self.calls, self.fired = group, calls, False
        self._on_fire, self._on_limit = on_fire, on_limit
        self._timeout, self._limit, self._lag = timeout, limit, lag
        self._started = time.monotonic()
        self._stall_at_start = lag.stalled()
        self._loop = loop
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
            fail(waiters, error)
        self._on_fire()
        if self._on_limit is not None:
            left = self._started + self._limit - time.monotonic()
            self._timer = self._loop.call_later(max(left, 0.0), self._on_limit)

    def cancel(self) -> None:
        self._timer.cancel()
