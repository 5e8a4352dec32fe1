"""Calendar arithmetic on business dates (docs/rules.md §1.1 expiry, §6 refund window).

"One calendar year / month after payment" is a statement about the wall clock where the
business runs (``Asia/Shanghai`` unless a deployment sets another zone), not about UTC: a
payment at 2027-01-30T17:00Z is made on 31 January in Shanghai, so its refund window ends on
28 February there.  Every function therefore takes a timezone-aware instant, moves it to the
business zone, shifts the local date (clamping the day to the target month's length, so
31 Jan + 1 month = 28/29 Feb and 29 Feb + 1 year = 28 Feb), keeps the local time of day, and
returns the result as a UTC instant.  No clock is read here.
"""

from __future__ import annotations

from calendar import monthrange
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_TZ = "Asia/Shanghai"

Zone = str | tzinfo


def business_zone(tz: Zone = DEFAULT_TZ) -> tzinfo:
    """The zone named by ``tz`` (an IANA name), or ``tz`` itself if it is already a tzinfo."""
    if isinstance(tz, tzinfo):
        return tz
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown business timezone {tz!r}") from exc


def _require_aware(moment: datetime, name: str) -> None:
    if not isinstance(moment, datetime) or moment.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {moment!r}")


def add_months(moment: datetime, months: int, tz: Zone = DEFAULT_TZ) -> datetime:
    """``moment`` + ``months`` calendar months on the business wall clock, as UTC.

    The day is clamped to the last day of the target month (31 Jan + 1 → 28 or 29 Feb).
    ``months`` may be negative.
    """
    _require_aware(moment, "moment")
    local = moment.astimezone(business_zone(tz))
    index = local.year * 12 + (local.month - 1) + months
    year, month = divmod(index, 12)
    month += 1
    day = min(local.day, monthrange(year, month)[1])
    # replace() keeps the wall-clock time and fold; in a zone with DST a time that falls in
    # a gap or overlap resolves the way zoneinfo resolves it, which is deterministic.
    return local.replace(year=year, month=month, day=day).astimezone(UTC)


def add_years(moment: datetime, years: int, tz: Zone = DEFAULT_TZ) -> datetime:
    """``moment`` + ``years`` calendar years on the business wall clock, as UTC.

    29 February maps to 28 February in a year that has none.
    """
    return add_months(moment, 12 * years, tz)


def package_expiry(paid_at: datetime, tz: Zone = DEFAULT_TZ) -> datetime:
    """When a package paid at ``paid_at`` expires: one calendar year later (docs/rules.md §1.1)."""
    return add_years(paid_at, 1, tz)


def refund_window_end(paid_at: datetime, tz: Zone = DEFAULT_TZ) -> datetime:
    """The first instant at which an order paid at ``paid_at`` can no longer be refunded.

    One calendar month after payment, clamped to the month's end (docs/rules.md §6).
    """
    return add_months(paid_at, 1, tz)


def within_refund_window(paid_at: datetime, at: datetime, tz: Zone = DEFAULT_TZ) -> bool:
    """Whether a refund requested at ``at`` is inside the window of an order paid at ``paid_at``.

    The end is exclusive: a request strictly before `refund_window_end` is inside, one at
    that instant or later is not (the convention metering uses for ``expires_at``).
    """
    _require_aware(at, "at")
    return at < refund_window_end(paid_at, tz)
