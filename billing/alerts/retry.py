"""When a failed delivery is tried again: the back-off schedule, jitter and Retry-After.

``schedule[i]`` is the delay before attempt ``i + 1`` (``schedule[0]``, normally 0, is the
first attempt's), so a delivery gets ``len(schedule)`` attempts and is failed after the
last.  Each delay is spread by ± ``jitter`` of itself, so that deliveries that failed
together do not all come back in the same instant; a receiver's ``Retry-After`` (seconds or
an HTTP date; at most a day is believed) is a floor under the delay.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from datetime import datetime
from email.utils import parsedate_to_datetime

MAX_RETRY_AFTER = 86_400.0


def next_delay(
    schedule: Sequence[float],
    failures: int,
    *,
    jitter: float,
    retry_after: float | None = None,
    rand: Callable[[], float] = random.random,
) -> float | None:
    """Seconds until the next attempt after ``failures`` failed ones; None: give up."""
    if failures >= len(schedule):
        return None
    delay = schedule[failures] * (1 + jitter * (2 * rand() - 1))
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return max(0.0, delay)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """``Retry-After`` as seconds from ``now``: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - now).total_seconds())
