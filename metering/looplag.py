"""How late the event loop runs its callbacks: the share of a wait that was the process's own.

A timer ticks every ``interval`` seconds.  A tick that runs late adds its delay, past a
small tolerance for timer rounding, to `LoopLag.stalled`: a running total of the time the
loop was too busy to run anything on time.  The stall accumulated while a Redis round was
in flight, taken from the round's age, leaves the time the round waited for Redis itself;
that is what the Meter's deadline measures (see `metering.meter`), so a saturated loop
that reads a reply late is never taken for a Redis that answers late.

Its owner (the Meter) starts it in the running loop and closes it; it costs one timer
callback per ``interval``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

from metering.metrics import LOOP_LAG

INTERVAL: Final = 0.005
# Timers fire on a millisecond clock: lateness up to this is rounding, not a stall.
TOLERANCE: Final = 0.002


class LoopLag:
    """Accumulates the event loop's stall time from the lateness of a periodic tick."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = INTERVAL) -> None:
        self._loop = loop
        self._interval = interval
        self._stalled = 0.0
        self._due = time.monotonic() + interval
        self._handle = loop.call_later(interval, self._tick)

    def _tick(self) -> None:
        now = time.monotonic()
        late = now - self._due
        if late > TOLERANCE:
            self._stalled += late
        LOOP_LAG.observe(max(late, 0.0))
        self._due = now + self._interval
        self._handle = self._loop.call_later(self._interval, self._tick)

    def stalled(self) -> float:
        """Seconds of stall so far, counting the tick that is overdue right now, if any."""
        late = time.monotonic() - self._due
        return self._stalled + (late if late > TOLERANCE else 0.0)

    def close(self) -> None:
        self._handle.cancel()
