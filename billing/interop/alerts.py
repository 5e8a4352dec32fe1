"""The interop alert kinds (docs/rules.md §4), on the alerts' extension API (`billing.alerts`).

- ``interop_expiring``: the enterprise's ``expiry_reminder_days`` (default 30, 7, 1) before a
  batch or the trial ends — only when that end actually lowers the active count below what
  is assigned, or to 0; each reminder once per end (an end ops move is a new end), and when
  several fall due at once only the nearest is sent.
- ``interop_expired``: a batch or the trial ended, under the same condition (it took
  members' accounts, or left none), once per end, within `RECENT` of it.
- ``interop_member_removed``: a member lost its account — at an end (``expired``) or by
  ops lowering the trial (``reduced``) — once per assignment, within `RECENT`.

Facts come from one source, ``interop``, loaded for many enterprises at once; it applies
the ends not yet settled, so the scheduler's evaluation at an end's instant alerts even
before the expiry job ran.  The job and the member routes ask for an evaluation right after
each change (cause ``interop``).  `configure` sets the trial policy the source reads (one
per billing process: `billing.interop.service.install_interop`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa

from billing.alerts import REGISTRY, AlertKind, Context, Message, Observation, Source, SourceEnv
from billing.interop.accounts import InteropPolicy, periods_of
from billing.interop.records import InteropStateRow, LicenceBatchRow, MemberRow
from billing.interop.rules import Period, active_count, end_hurts, settle
from billing.interop.tables import interop_members, interop_state, licence_batches
from billing.rows import EnterpriseRow
from billing.schema import enterprises

INTEROP_CAUSE: Final = "interop"
RECENT: Final = timedelta(days=7)
_CHUNK = 500
_US = timedelta(microseconds=1)
_policy = InteropPolicy()


def configure(policy: InteropPolicy) -> None:
    global _policy
    _policy = policy


@dataclass(frozen=True, slots=True)
class RemovedMember:
    assignment: int
    userid: str
    at: datetime
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class InteropFacts:
    periods: tuple[Period, ...]
    assigned: int  # members holding an account now
    removed: tuple[RemovedMember, ...]  # within RECENT, recorded or not yet settled


def _facts(
    enterprise: EnterpriseRow,
    state: InteropStateRow | None,
    batches: Sequence[LicenceBatchRow],
    members: Sequence[MemberRow],
    now: datetime,
) -> InteropFacts:
    periods = periods_of(enterprise, state, batches, _policy)
    holding = [m for m in members if m.released_at is None]
    pending = settle(
        [m.userid for m in holding], periods, state.settled_through if state else None, now
    )
    ids = {m.userid: m.id for m in holding}
    removed = [
        RemovedMember(m.id, m.userid, m.released_at, m.release_reason or "")
        for m in members
        if m.released_at is not None and m.release_reason in ("expired", "reduced")
    ]
    removed += [RemovedMember(ids[r.member], r.member, r.at, "expired") for r in pending]
    return InteropFacts(
        periods=periods, assigned=len(holding) - len(pending), removed=tuple(removed)
    )


async def load_facts(
    env: SourceEnv, enterprise_ids: Sequence[str], now: datetime
) -> dict[str, InteropFacts]:
    """The interop facts of each enterprise, in a few queries per 500 enterprises."""
    found: dict[str, InteropFacts] = {}
    async with env.db.engine.connect() as conn:
        for start in range(0, len(enterprise_ids), _CHUNK):
            ids = list(enterprise_ids[start : start + _CHUNK])
            ents = await conn.execute(sa.select(enterprises).where(enterprises.c.id.in_(ids)))
            states = await conn.execute(
                sa.select(interop_state).where(interop_state.c.enterprise_id.in_(ids))
            )
            by_state = {r.enterprise_id: InteropStateRow.from_row(r) for r in states}
            batches: dict[str, list[LicenceBatchRow]] = defaultdict(list)
            for r in await conn.execute(
                sa.select(licence_batches).where(licence_batches.c.enterprise_id.in_(ids))
            ):
                batches[r.enterprise_id].append(LicenceBatchRow.from_row(r))
            members: dict[str, list[MemberRow]] = defaultdict(list)
            recent = sa.or_(
                interop_members.c.released_at.is_(None),
                interop_members.c.released_at > now - RECENT,
            )
            for r in await conn.execute(
                sa.select(interop_members)
                .where(interop_members.c.enterprise_id.in_(ids), recent)
                .order_by(interop_members.c.id)
            ):
                members[r.enterprise_id].append(MemberRow.from_row(r))
            for row in ents:
                e = EnterpriseRow.from_row(row)
                found[e.id] = _facts(e, by_state.get(e.id), batches[e.id], members[e.id], now)
    return found


def _end_subject(period: Period) -> str:
    return f"{period.ref}@{period.ends_at.isoformat()}"


def _period_detail(facts: InteropFacts, period: Period) -> dict[str, Any]:
    return {
        "period": period.kind,
        "ref": period.ref,
        "accounts": period.accounts,
        "ends_at": period.ends_at.isoformat(),
        "accounts_before": active_count(facts.periods, period.ends_at - _US),
        "accounts_after": active_count(facts.periods, period.ends_at),
        "assigned": facts.assigned,
    }


def observe_expiring(ctx: Context) -> Iterable[Observation]:
    facts: InteropFacts = ctx.fact(INTEROP_CAUSE)
    days = sorted(set(ctx.config.expiry_reminder_days))
    for period in facts.periods:
        end = period.ends_at
        passed = [d for d in days if end - timedelta(days=d) <= ctx.now < end]
        if not passed or not end_hurts(facts.periods, end, facts.assigned):
            continue
        nearest = min(passed)
        for d in passed:
            yield Observation(
                subject=f"{_end_subject(period)}:{d}d",
                state="due" if d == nearest else "passed",
                detail={**_period_detail(facts, period), "days": d},
                at=end - timedelta(days=d),
            )


def observe_expired(ctx: Context) -> Iterable[Observation]:
    facts: InteropFacts = ctx.fact(INTEROP_CAUSE)
    for period in facts.periods:
        end = period.ends_at
        if not ctx.now - RECENT < end <= ctx.now:
            continue
        before = active_count(facts.periods, end - _US)
        after = active_count(facts.periods, end)
        took = sum(1 for r in facts.removed if r.at == end)
        if after < before and (after == 0 or took):
            detail = {**_period_detail(facts, period), "members_removed": took}
            yield Observation(subject=_end_subject(period), state="expired", detail=detail, at=end)


def observe_removed(ctx: Context) -> Iterable[Observation]:
    facts: InteropFacts = ctx.fact(INTEROP_CAUSE)
    for r in facts.removed:
        if r.at > ctx.now - RECENT:
            yield Observation(
                subject=f"member:{r.assignment}",
                state="removed",
                detail={"userid": r.userid, "removed_at": r.at.isoformat(), "reason": r.reason},
                at=r.at,
            )


def next_moment(ctx: Context) -> datetime | None:
    """The next reminder moment or end after now (the scheduler evaluates then)."""
    facts: InteropFacts = ctx.fact(INTEROP_CAUSE)
    moments = [
        moment
        for p in facts.periods
        for moment in (
            p.ends_at,
            *(p.ends_at - timedelta(days=d) for d in ctx.config.expiry_reminder_days),
        )
        if moment > ctx.now
    ]
    return min(moments, default=None)


def _when(data: Mapping[str, Any]) -> str:
    return str(data.get("ends_at", ""))


def describe_expiring(data: Mapping[str, Any]) -> Message:
    what = "试用" if data.get("period") == "trial" else f"账号批次 {data.get('ref')}"
    what_en = "the trial" if data.get("period") == "trial" else f"licence batch {data.get('ref')}"
    return Message(
        "互通账号即将到期",
        "Interop accounts expiring",
        (f"{what}将于 {_when(data)} 到期（{data.get('days')} 天后）",
         f"到期后可用账号 {data.get('accounts_after')}，已分配 {data.get('assigned')}"),
        (f"{what_en} ends at {_when(data)} (in {data.get('days')} days)",
         f"accounts after it: {data.get('accounts_after')}; assigned: {data.get('assigned')}"),
    )  # fmt: skip


def describe_expired(data: Mapping[str, Any]) -> Message:
    return Message(
        "互通账号已到期",
        "Interop accounts expired",
        (f"{data.get('ref')} 已于 {_when(data)} 到期，可用账号 {data.get('accounts_after')}",
         f"失去账号的成员 {data.get('members_removed')}"),
        (f"{data.get('ref')} ended at {_when(data)}; accounts left: {data.get('accounts_after')}",
         f"members who lost their account: {data.get('members_removed')}"),
    )  # fmt: skip


def describe_removed(data: Mapping[str, Any]) -> Message:
    return Message(
        "成员失去互通账号",
        "Member lost its interop account",
        (f"成员 {data.get('userid')} 于 {data.get('removed_at')} 失去账号",),
        (f"Member {data.get('userid')} lost its account at {data.get('removed_at')}"
         f" ({data.get('reason')})",),
    )  # fmt: skip


REGISTRY.add_source(Source(name=INTEROP_CAUSE, load=load_facts))
REGISTRY.add_kind(
    AlertKind(
        name="interop_expiring",
        source=INTEROP_CAUSE,
        initial="pending",
        observe=observe_expiring,
        fires=lambda before, after: before == "pending" and after == "due",
        describe=describe_expiring,
        due=next_moment,
    )
)
REGISTRY.add_kind(
    AlertKind(
        name="interop_expired",
        source=INTEROP_CAUSE,
        initial="active",
        observe=observe_expired,
        fires=lambda before, after: after == "expired",
        describe=describe_expired,
        due=next_moment,
    )
)
REGISTRY.add_kind(
    AlertKind(
        name="interop_member_removed",
        source=INTEROP_CAUSE,
        initial="holding",
        observe=observe_removed,
        fires=lambda before, after: after == "removed",
        describe=describe_removed,
    )
)
