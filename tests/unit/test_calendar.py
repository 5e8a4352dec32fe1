"""Calendar arithmetic on the business wall clock: leap days, month ends, UTC vs Shanghai."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.rules.calendar import (
    DEFAULT_TZ,
    add_months,
    add_years,
    business_zone,
    package_expiry,
    refund_window_end,
    within_refund_window,
)

SH = ZoneInfo("Asia/Shanghai")


def sh(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=SH)


def test_default_zone_is_shanghai():
    assert DEFAULT_TZ == "Asia/Shanghai"
    assert business_zone() == SH


def test_results_are_utc():
    out = add_months(sh(2027, 3, 15, 10), 1)
    assert out.tzinfo is UTC
    assert out == sh(2027, 4, 15, 10)


def test_leap_day_plus_one_year_is_28_february():
    assert add_years(sh(2028, 2, 29, 10, 30), 1) == sh(2029, 2, 28, 10, 30)


def test_leap_day_plus_four_years_is_29_february_again():
    assert add_years(sh(2028, 2, 29, 10), 4) == sh(2032, 2, 29, 10)


def test_package_expiry_is_one_calendar_year_after_payment():
    assert package_expiry(sh(2027, 6, 1, 12)) == sh(2028, 6, 1, 12)
    assert package_expiry(sh(2028, 2, 29, 12)) == sh(2029, 2, 28, 12)


def test_31_january_2027_plus_one_month_clamps_to_28_february():
    assert add_months(sh(2027, 1, 31, 9), 1) == sh(2027, 2, 28, 9)
    assert refund_window_end(sh(2027, 1, 31, 9)) == sh(2027, 2, 28, 9)


def test_31_january_2028_plus_one_month_clamps_to_29_february():
    assert refund_window_end(sh(2028, 1, 31, 9)) == sh(2028, 2, 29, 9)


@pytest.mark.parametrize(("start", "months", "end"), [
    (date(2027, 3, 31), 1, date(2027, 4, 30)),
    (date(2027, 12, 31), 1, date(2028, 1, 31)),
    (date(2027, 12, 15), 2, date(2028, 2, 15)),
    (date(2027, 3, 31), -1, date(2027, 2, 28)),
    (date(2027, 5, 31), 13, date(2028, 6, 30)),
])  # fmt: skip
def test_month_end_clamping_and_year_rollover(start, months, end):
    eight = time(8, tzinfo=SH)
    assert add_months(datetime.combine(start, eight), months) == datetime.combine(end, eight)


def test_a_utc_time_that_is_already_the_next_day_in_shanghai():
    # 17:00Z on 30 Jan is 01:00 on 31 Jan in Shanghai: the window ends on 28 Feb there, a
    # day earlier than naive UTC arithmetic (30 Jan → 28 Feb 17:00Z) would say.
    paid = datetime(2027, 1, 30, 17, 0, tzinfo=UTC)
    assert refund_window_end(paid) == sh(2027, 2, 28, 1, 0)
    assert refund_window_end(paid) == datetime(2027, 2, 27, 17, 0, tzinfo=UTC)
    assert refund_window_end(paid, "UTC") == datetime(2027, 2, 28, 17, 0, tzinfo=UTC)


def test_a_leap_day_that_exists_only_in_shanghai():
    # 16:30Z on 28 Feb 2028 is 00:30 on 29 Feb in Shanghai.
    paid = datetime(2028, 2, 28, 16, 30, tzinfo=UTC)
    assert package_expiry(paid) == sh(2029, 2, 28, 0, 30)
    assert package_expiry(paid, "UTC") == datetime(2029, 2, 28, 16, 30, tzinfo=UTC)


def test_input_in_any_offset_means_the_same_instant():
    tokyo = datetime(2027, 1, 31, 10, tzinfo=timezone(timedelta(hours=9)))  # 09:00 Shanghai
    assert refund_window_end(tokyo) == sh(2027, 2, 28, 9)


def test_tz_may_be_a_tzinfo_or_a_name():
    paid = datetime(2027, 1, 30, 17, tzinfo=UTC)
    assert refund_window_end(paid, SH) == refund_window_end(paid, "Asia/Shanghai")


def test_window_end_is_exclusive():
    paid = sh(2027, 1, 31, 9)
    end = sh(2027, 2, 28, 9)
    assert within_refund_window(paid, end - timedelta(microseconds=1))
    assert not within_refund_window(paid, end)
    assert not within_refund_window(paid, end + timedelta(days=1))
    assert within_refund_window(paid, paid)


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        add_months(datetime(2027, 1, 1), 1)
    with pytest.raises(ValueError, match="timezone-aware"):
        within_refund_window(sh(2027, 1, 1), datetime(2027, 1, 2))


def test_unknown_zone_is_a_value_error():
    with pytest.raises(ValueError, match="unknown business timezone"):
        business_zone("Mars/Olympus_Mons")


moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2090, 12, 31), timezones=st.just(UTC)
)


@given(moments, st.integers(-36, 36))
def test_add_months_keeps_the_local_time_and_never_overflows_the_month(moment, months):
    out = add_months(moment, months).astimezone(SH)
    local = moment.astimezone(SH)
    assert out.time() == local.time()
    assert (out.year * 12 + out.month) - (local.year * 12 + local.month) == months
    assert out.day == local.day or (out.day < local.day and (out + timedelta(days=1)).day == 1)


@given(moments)
def test_a_year_is_twelve_months(moment):
    assert add_years(moment, 1) == add_months(moment, 12)
