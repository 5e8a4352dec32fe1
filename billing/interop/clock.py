"""The clock interop reads every instant from: a trial's or a batch's end, a callback's arrival.

It is injected (`billing.interop.service.InteropRuntime.clock`), so that tests can stand at
the exact instant a batch ends — a microsecond before, then at it — without sleeping.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, timezone-aware."""
        ...


class SystemClock:
    """The wall clock, in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)
