"""Admission control: a worker handles at most ``max_inflight`` requests at once.

A request beyond that waits in a FIFO queue of at most ``max_queued``, for at most
``queue_timeout``; when the queue is full, or the wait runs out, it is refused at once
with a 503 and ``Retry-After`` — before any PV is taken and without counting against
Redis (docs/architecture.md §10).  Overload thus shows as a bounded queue and fast,
explicit refusals instead of every request slowing down until deadlines pass.

The worker keeps accepting connections while saturated instead of pausing ``accept``:
with SO_REUSEPORT the kernel has already chosen a worker for each connection, so those
held in a paused worker's backlog would wait there even while the other workers are
idle, and a client would see a hang rather than an answer it can act on.
"""

from __future__ import annotations

import asyncio
from collections import deque

from gateway.metrics import ADMISSION_INFLIGHT, ADMISSION_QUEUED, ADMISSION_REFUSED


class Admission:
    """Slots for requests in flight, and a bounded queue of requests waiting for one."""

    def __init__(self, max_inflight: int, max_queued: int, queue_timeout: float) -> None:
        if max_inflight < 1 or max_queued < 0 or queue_timeout <= 0:
            raise ValueError("max_inflight, max_queued and queue_timeout must be positive")
        self._max_inflight = max_inflight
        self._max_queued = max_queued
        self._timeout = queue_timeout
        self.inflight = 0
        self.queued = 0  # live waiters; the deque may also hold expired ones
        self._waiters: deque[asyncio.Future[bool]] = deque()

    def try_enter(self) -> bool:
        """Take a slot if one is free and nobody is waiting for one (the fast path)."""
        if self.inflight < self._max_inflight and not self.queued:
            self.inflight += 1
            return True
        return False

    def enter_nowait(self) -> bool | asyncio.Future[bool]:
        """True (admitted) or False (refused) now, or a future of either (queued)."""
        if self.try_enter():
            return True
        if self.queued >= self._max_queued:
            ADMISSION_REFUSED.labels("queue_full").inc()
            return False
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(waiter)
        self.queued += 1
        timer = loop.call_later(self._timeout, self._expire, waiter)
        waiter.add_done_callback(lambda _: timer.cancel())
        return waiter

    async def enter(self) -> bool:
        """Wait for a slot; False when the request is to be refused (queue full, too long)."""
        admitted = self.enter_nowait()
        if isinstance(admitted, bool):
            return admitted
        try:
            return await admitted
        except asyncio.CancelledError:
            self.abandon(admitted)
            raise

    def abandon(self, waiter: asyncio.Future[bool]) -> None:
        """The request queued on ``waiter`` went away: give back what it holds, if anything."""
        if not waiter.done():
            waiter.cancel()
            self._dequeued()
        elif not waiter.cancelled() and waiter.result():
            self.leave()  # the slot was handed over just as the caller went away
        elif waiter.cancelled():
            self._dequeued()

    def leave(self) -> None:
        """Give the slot back: to the longest-waiting live request, else to the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.queued -= 1
                waiter.set_result(True)  # the slot passes on; inflight is unchanged
                return
        self.inflight -= 1

    def _expire(self, waiter: asyncio.Future[bool]) -> None:
        if not waiter.done():
            waiter.set_result(False)
            ADMISSION_REFUSED.labels("queue_timeout").inc()
            self._dequeued()

    def _dequeued(self) -> None:
        self.queued -= 1
        # Expired waiters stay in the deque until a slot frees up; keep them from piling
        # up while no slot does (a hung origin): drop them once they outnumber the live.
        if len(self._waiters) > 2 * self.queued + 64:
            self._waiters = deque(w for w in self._waiters if not w.done())

    def report(self) -> None:
        """Publish the slots in use and the queue length (periodically, not per request)."""
        ADMISSION_INFLIGHT.set(self.inflight)
        ADMISSION_QUEUED.set(self.queued)
