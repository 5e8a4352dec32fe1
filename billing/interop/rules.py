"""Interop accounts as pure rules (docs/rules.md §1.2): no I/O, no clock, every time passed in.

A **licence period** is ``accounts`` accounts valid over ``[starts_at, ends_at)``: the trial
(from registration to ``+ 3 calendar months`` unless ops set the end WeCom reports) or a
licence batch (``paid_at`` to ``paid_at + years``).  The active count at an instant is the
sum over the periods that cover it; the end is exclusive, so at a batch's ``ends_at`` its
accounts are gone.

Members hold accounts in the order they were assigned.  When the count drops below the
number of members, the members assigned **last** lose their accounts first, at the very
instant of the drop (`settle`).  A member who lost an account does not get it back when a
later purchase raises the count: it is assigned again, like anyone else.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal

from billing.rules.calendar import Zone, add_months, add_years

INTEROP_SKU: Final = "wecom_interop"
TRIAL_MONTHS: Final = 3
TRIAL_REF: Final = "trial"

PeriodKind = Literal["trial", "batch"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Period:
    """``accounts`` accounts valid from ``starts_at`` (inclusive) to ``ends_at`` (exclusive)."""

    kind: PeriodKind
    ref: str  # the batch id, or "trial"
    accounts: int
    starts_at: datetime
    ends_at: datetime

    def covers(self, at: datetime) -> bool:
        return self.starts_at <= at < self.ends_at


def trial_period(
    registered_at: datetime, accounts: int, *, ends_at: datetime | None = None, tz: Zone
) -> Period:
    """The trial: from registration, ``accounts`` accounts until ``ends_at`` (ops' date) or
    registration + 3 calendar months."""
    end = ends_at if ends_at is not None else add_months(registered_at, TRIAL_MONTHS, tz)
    return Period(
        kind="trial", ref=TRIAL_REF, accounts=accounts, starts_at=registered_at, ends_at=end
    )


def batch_period(batch_id: str, accounts: int, paid_at: datetime, years: int, tz: Zone) -> Period:
    """A licence batch: ``accounts`` accounts from ``paid_at`` to ``paid_at + years``."""
    return Period(
        kind="batch",
        ref=batch_id,
        accounts=accounts,
        starts_at=paid_at,
        ends_at=add_years(paid_at, years, tz),
    )


def active_count(periods: Iterable[Period], at: datetime) -> int:
    """Accounts the enterprise holds at ``at``."""
    return sum(p.accounts for p in periods if p.covers(at))


def drop_instants(
    periods: Iterable[Period], after: datetime | None, until: datetime
) -> list[datetime]:
    """The ends of periods in ``(after, until]``, oldest first, each once."""
    return sorted(
        {p.ends_at for p in periods if (after is None or p.ends_at > after) and p.ends_at <= until}
    )


@dataclass(frozen=True, slots=True)
class Removal:
    """Member ``member`` lost its account at ``at``, when the count fell to ``count``."""

    member: str
    at: datetime
    count: int


def settle(
    members: Sequence[str], periods: Sequence[Period], after: datetime | None, until: datetime
) -> list[Removal]:
    """Who loses an account at each drop in ``(after, until]``.

    ``members`` hold an account now, in assignment order (first assigned first).  At each
    drop instant, if more members hold accounts than the count then, the last assigned lose
    theirs; the others keep them for the next drop.
    """
    holding = list(members)
    removals: list[Removal] = []
    for at in drop_instants(periods, after, until):
        count = active_count(periods, at)
        if len(holding) > count:
            removals.extend(Removal(m, at, count) for m in reversed(holding[count:]))
            del holding[count:]
    return removals


def excess(members: Sequence[str], count: int, at: datetime) -> list[Removal]:
    """The members beyond ``count`` (a count lowered now, by ops): the last assigned first."""
    return [Removal(m, at, count) for m in reversed(members[count:])]


@dataclass(frozen=True, slots=True, kw_only=True)
class Expiry:
    """The next instant at which periods end, and the count just before and from then on."""

    at: datetime
    ending: tuple[Period, ...]
    count_before: int
    count_after: int


def next_expiry(periods: Sequence[Period], after: datetime) -> Expiry | None:
    """The first end of a period strictly after ``after`` that covers ``after`` or later."""
    ends = sorted({p.ends_at for p in periods if p.ends_at > after})
    if not ends:
        return None
    at = ends[0]
    return Expiry(
        at=at,
        ending=tuple(p for p in periods if p.ends_at == at),
        count_before=active_count(periods, at - timedelta(microseconds=1)),
        count_after=active_count(periods, at),
    )


def end_hurts(periods: Sequence[Period], end: datetime, assigned: int) -> bool:
    """Whether the periods ending at ``end`` lower the count below ``assigned``, or to 0.

    An end that leaves every member its account and some accounts besides is worth no
    reminder (docs/rules.md §4: only when it actually takes accounts away, or all of them).
    """
    before = active_count(periods, end - timedelta(microseconds=1))
    after = active_count(periods, end)
    if after >= before:
        return False
    return after == 0 or after < assigned


RelayResult = Literal["relayed", "dropped_inactive"]


def relay_decision(member: str | None, member_holds: bool, active: int) -> RelayResult:
    """An event about a member is relayed while that member holds an account; an event that
    names no member while the enterprise holds any (docs/rules.md §1.2)."""
    if member is None:
        return "relayed" if active > 0 else "dropped_inactive"
    return "relayed" if member_holds else "dropped_inactive"
