"""The pure interop rules (billing/interop/rules.py, docs/rules.md §1.2): the trial, batches,
the active count at an instant, removal order, reminders' condition, the relay decision —
and `settle` against a reference model that walks time minute by minute."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from billing.interop.rules import (
    Period,
    Removal,
    active_count,
    batch_period,
    drop_instants,
    end_hurts,
    excess,
    next_expiry,
    relay_decision,
    settle,
    trial_period,
)
from billing.wecom.ratelimit import TokenBuckets

T = datetime(2027, 1, 30, 17, 0, tzinfo=UTC)  # 31 January 01:00 in Shanghai
US = timedelta(microseconds=1)


def period(accounts: int, start: int, end: int, ref: str = "b") -> Period:
    """``accounts`` over minutes [start, end) after T."""
    return Period(
        kind="batch",
        ref=ref,
        accounts=accounts,
        starts_at=T + timedelta(minutes=start),
        ends_at=T + timedelta(minutes=end),
    )


def test_the_trial_ends_three_calendar_months_later_on_the_business_clock():
    trial = trial_period(T, 10, tz="Asia/Shanghai")
    # 31 January + 3 months = 30 April (clamped), 01:00 in Shanghai.
    assert trial.ends_at == datetime(2027, 4, 29, 17, 0, tzinfo=UTC)
    assert trial.covers(trial.ends_at - US)
    assert not trial.covers(trial.ends_at)
    reported = T + timedelta(days=20)
    assert trial_period(T, 3, ends_at=reported, tz="Asia/Shanghai").ends_at == reported


def test_a_batch_runs_calendar_years_from_payment():
    leap = datetime(2028, 2, 29, 2, 0, tzinfo=UTC)
    assert batch_period("x", 5, leap, 1, "Asia/Shanghai").ends_at == datetime(
        2029, 2, 28, 2, 0, tzinfo=UTC
    )
    assert batch_period("x", 5, T, 3, "Asia/Shanghai").ends_at == datetime(
        2030, 1, 30, 17, 0, tzinfo=UTC
    )


def test_the_active_count_sums_what_covers_the_instant():
    periods = [period(10, 0, 60, "trial"), period(3, 10, 100), period(2, 20, 30)]
    counts = [active_count(periods, T + timedelta(minutes=m)) for m in (0, 10, 20, 30, 60, 100)]
    assert counts == [10, 13, 15, 13, 3, 0]
    assert active_count(periods, T + timedelta(minutes=30) - US) == 15


def test_the_last_assigned_lose_their_accounts_at_each_drop():
    periods = [period(3, 0, 10), period(2, 0, 20)]
    members = ["m1", "m2", "m3", "m4", "m5"]
    removals = settle(members, periods, None, T + timedelta(minutes=30))
    at10, at20 = T + timedelta(minutes=10), T + timedelta(minutes=20)
    assert removals == [
        Removal("m5", at10, 2),
        Removal("m4", at10, 2),
        Removal("m3", at10, 2),
        Removal("m2", at20, 0),
        Removal("m1", at20, 0),
    ]
    # Only the drops after the mark, up to the instant asked about.
    assert settle(members, periods, at10, at20 - US) == []
    assert [r.member for r in settle(members[:2], periods, at10, at20)] == ["m2", "m1"]
    assert excess(members, 3, at10) == [Removal("m5", at10, 3), Removal("m4", at10, 3)]


def _model(members: list[str], periods: list[Period], minutes: int) -> dict[str, datetime]:
    """Minute by minute: at each minute, drop the last members beyond the count."""
    holding, lost = list(members), {}
    for minute in range(minutes + 1):
        at = T + timedelta(minutes=minute)
        count = active_count(periods, at)
        while len(holding) > count:
            lost[holding.pop()] = at
    return lost


windows = st.lists(
    st.tuples(st.integers(1, 5), st.integers(0, 30), st.integers(1, 30)), min_size=1, max_size=5
)


@given(windows, st.integers(0, 12))
def test_settle_agrees_with_walking_time(specs: list[tuple[int, int, int]], n: int):
    periods = [period(a, 0, start + length) for a, start, length in specs]
    members = [f"m{i}" for i in range(min(n, active_count(periods, T)))]
    found = {r.member: r.at for r in settle(members, periods, None, T + timedelta(minutes=70))}
    assert found == _model(members, periods, 70)


def test_the_next_expiry_and_whether_it_hurts():
    periods = [period(10, 0, 60, "trial"), period(3, 0, 100, "b1")]
    expiry = next_expiry(periods, T)
    assert expiry is not None
    assert (expiry.at, [p.ref for p in expiry.ending]) == (T + timedelta(minutes=60), ["trial"])
    assert (expiry.count_before, expiry.count_after) == (13, 3)
    end = T + timedelta(minutes=60)
    assert not end_hurts(periods, end, assigned=3)  # everyone keeps an account
    assert end_hurts(periods, end, assigned=4)  # someone loses one
    assert end_hurts(periods, T + timedelta(minutes=100), assigned=0)  # down to 0
    assert drop_instants(periods, None, end) == [end]
    assert next_expiry(periods, T + timedelta(minutes=100)) is None


def test_the_relay_decision():
    assert relay_decision("alice", True, 1) == "relayed"
    assert relay_decision("alice", False, 5) == "dropped_inactive"
    assert relay_decision(None, False, 1) == "relayed"
    assert relay_decision(None, False, 0) == "dropped_inactive"


def test_token_buckets_refill_and_stay_bounded():
    buckets = TokenBuckets(rate=1.0, burst=2, max_keys=2)
    assert [buckets.take("a", 0.0) for _ in range(3)] == [True, True, False]
    assert buckets.take("a", 1.0) is True  # one token a second
    assert buckets.take("b", 1.0) is True
    assert buckets.take("c", 1.0) is False  # full, nothing refilled: refused, not grown
    assert len(buckets) == 2
    assert buckets.take("c", 10.0) is True  # refilled ones are dropped to make room
    assert len(buckets) <= 2
