"""The deadline of a round of debits: Redis time, not wall time (docs/architecture.md §10).

A round's `Deadline` starts when the round is written to Redis.  When it comes due it
takes the event loop's stall since then (`metering.looplag`) from the round's age; while
what is left — the time the round really waited for Redis — is under ``timeout``, the
loop was lagging and it waits for the rest.  Past ``limit`` of wall time it fires
whatever the lag, so that a hung Redis behind a saturated loop still fails.  Firing hands
the round's waiters a `MeterTimeout` once; ``on_limit``, if given, runs if the round is
still unanswered at ``limit`` (the Meter drops a connection stuck that long).  The
deadlines of one Meter share one timer (`Deadlines`).

A `Waiter` is one page view's debit in a round, and is its caller (the engine's exchange):
it is answered once, in place — no future, no callback scheduled for a later turn of the
loop, which a page view would pay for twice (docs/architecture.md §3, "The Meter").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
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
    """One round's deadline, watched by its `Deadlines`: fails the round's waiters with a
    timeout once Redis, not the loop, is late (once); `cancel` when the round is answered."""

    __slots__ = (
        "_limit_timer",
        "_owner",
        "calls",
        "cancelled",
        "fired",
        "group",
        "on_limit",
        "round",
        "stall_at_start",
        "started",
    )

    def __init__(
        self,
        owner: Deadlines,
        group: Sequence[tuple[str, Waiters]],
        calls: int,
        round_: object,
        on_limit: Callable[[], None] | None,
    ) -> None:
        self._owner = owner
        self.group, self.calls, self.round, self.on_limit = group, calls, round_, on_limit
        self.started = time.monotonic()
        self.stall_at_start = owner.lag.stalled()
        self.cancelled = self.fired = False
        self._limit_timer: asyncio.TimerHandle | None = None

    def cancel(self) -> None:
        self.cancelled = True
        self.group = ()  # the waiters are not kept until the next check
        if self._limit_timer is not None:
            self._limit_timer.cancel()

    def fire(self) -> None:
        if self.cancelled:
            return  # the reply came in the turn the deadline fell due: it is used
        self.fired = True
        owner = self._owner
        error = scripts.translate(TimeoutError(), f"debit of {self.calls} batches")
        for _, waiters in self.group:
            fail(waiters, error)
        owner.on_fire(self.round)
        if self.on_limit is not None:
            left = self.started + owner.limit - time.monotonic()
            self._limit_timer = owner.loop.call_later(max(left, 0.0), self.on_limit)


class Deadlines:
    """The deadlines of one Meter's rounds in flight, on one timer.

    A timer per round cost a few thousand instructions (more than the rest of a round's
    bookkeeping) for a deadline that almost never falls due.  Rounds start in order and
    share ``timeout`` and ``limit``, so the oldest round still waiting is always the first
    due — its Redis time (age less the loop's stall since it started) is the largest — and
    one timer, armed for it, is enough: when it rings, answered rounds are dropped, those
    due fire (one turn later, so that a reply read in this very turn is used rather than
    lost), and the timer is armed again for the next, if any.  ``on_fire`` gets the
    ``round_`` of a deadline that fired.
    """

    __slots__ = ("_queue", "_timeout", "_timer", "lag", "limit", "loop", "on_fire")

    def __init__(
        self,
        timeout: float,
        limit: float,
        lag: LoopLag,
        loop: asyncio.AbstractEventLoop,
        on_fire: Callable[[Any], None],
    ) -> None:
        self._timeout, self.limit, self.lag, self.loop = timeout, limit, lag, loop
        self.on_fire = on_fire
        self._queue: deque[Deadline] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def start(
        self,
        group: Sequence[tuple[str, Waiters]],
        calls: int,
        round_: object,
        on_limit: Callable[[], None] | None = None,
    ) -> Deadline:
        """The deadline of a round being written now."""
        deadline = Deadline(self, group, calls, round_, on_limit)
        self._queue.append(deadline)
        if self._timer is None:
            self._timer = self.loop.call_later(self._timeout, self._check)
        return deadline

    @property
    def waiting(self) -> int:
        """Rounds watched (answered ones leave at the next check)."""
        return len(self._queue)

    def _check(self) -> None:
        self._timer = None
        queue, timeout, limit = self._queue, self._timeout, self.limit
        now = time.monotonic()
        stalled = self.lag.stalled()
        while queue:
            first = queue[0]
            if first.cancelled:
                queue.popleft()
                continue
            age = now - first.started
            redis_time = age - (stalled - first.stall_at_start)
            if redis_time < timeout and age < limit:  # not due yet: the loop was lagging
                wait = min(timeout - redis_time, limit - age)
                self._timer = self.loop.call_later(wait, self._check)
                return
            queue.popleft()
            self.loop.call_soon(first.fire)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
