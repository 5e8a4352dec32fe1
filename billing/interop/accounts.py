"""An enterprise's interop accounts in the ledger: periods, members, and settling expiries.

**Settling.** Every end of a period up to ``interop_state.settled_through`` has taken its
accounts away: the members it left without one have ``released_at`` = that exact instant
(reason ``expired``).  `settle_enterprise` moves the mark to now, recording what the ends in
between took (`billing.interop.rules.settle`); the scheduler job does it at each end, and
anything that writes members does it first, under the enterprise's lock.  Readers never
wait for it: `AccountsView` applies the ends not yet settled to what it read, so an event
that arrives at the instant a batch ends finds its member without an account even if the
job has not run yet (docs/rules.md §1.2).

**Lock.** Writers take the enterprise's row lock with a no-op UPDATE: a row lock on
PostgreSQL, the database's write lock on SQLite (whose first write opens the transaction),
so that two assignments cannot both take the last free account.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.errors import NotFound
from billing.interop import licences
from billing.interop.records import InteropStateRow, LicenceBatchRow, MemberRow
from billing.interop.rules import (
    Expiry,
    Period,
    Removal,
    active_count,
    batch_period,
    drop_instants,
    next_expiry,
    settle,
    trial_period,
)
from billing.interop.tables import interop_members, interop_state
from billing.rows import EnterpriseRow
from billing.rules.calendar import DEFAULT_TZ, Zone
from billing.schema import enterprises

DEFAULT_TRIAL_ACCOUNTS = 10


@dataclass(frozen=True, slots=True, kw_only=True)
class InteropPolicy:
    """What the billing settings say about interop (``[interop]``, ``timezone``)."""

    trial_accounts: int = DEFAULT_TRIAL_ACCOUNTS
    tz: Zone = DEFAULT_TZ


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountsView:
    """An enterprise's interop accounts as of ``at``, the unsettled ends applied."""

    enterprise: EnterpriseRow
    state: InteropStateRow | None
    trial: Period
    batches: tuple[LicenceBatchRow, ...]
    periods: tuple[Period, ...]
    holding: tuple[MemberRow, ...]  # hold an account at ``at``, in assignment order
    pending: tuple[Removal, ...]  # lost it at an end ``settled_through`` has not reached
    at: datetime

    @property
    def active(self) -> int:
        return active_count(self.periods, self.at)

    @property
    def next_expiry(self) -> Expiry | None:
        return next_expiry(self.periods, self.at)

    def holds(self, userid: str) -> bool:
        return any(m.userid == userid for m in self.holding)


def periods_of(
    enterprise: EnterpriseRow,
    state: InteropStateRow | None,
    batches: Sequence[LicenceBatchRow],
    policy: InteropPolicy,
) -> tuple[Period, ...]:
    """The trial (with ops' overrides) and every licence batch, as periods."""
    accounts = policy.trial_accounts
    ends_at = None
    if state is not None:
        accounts = policy.trial_accounts if state.trial_accounts is None else state.trial_accounts
        ends_at = state.trial_ends_at
    trial = trial_period(enterprise.created_at, accounts, ends_at=ends_at, tz=policy.tz)
    return (
        trial,
        *(batch_period(b.id, b.accounts, b.valid_from, b.years, policy.tz) for b in batches),
    )


async def read_state(conn: AsyncConnection, enterprise_id: str) -> InteropStateRow | None:
    row = (
        await conn.execute(
            sa.select(interop_state).where(interop_state.c.enterprise_id == enterprise_id)
        )
    ).first()
    return None if row is None else InteropStateRow.from_row(row)


async def holding_members(conn: AsyncConnection, enterprise_id: str) -> list[MemberRow]:
    """The members whose account is not released, in assignment order."""
    rows = await conn.execute(
        sa.select(interop_members)
        .where(
            interop_members.c.enterprise_id == enterprise_id,
            interop_members.c.released_at.is_(None),
        )
        .order_by(interop_members.c.id)
    )
    return [MemberRow.from_row(r) for r in rows]


async def read_view(
    conn: AsyncConnection, enterprise: EnterpriseRow, at: datetime, policy: InteropPolicy
) -> AccountsView:
    """What the enterprise holds at ``at`` (read only; the unsettled ends applied)."""
    state = await read_state(conn, enterprise.id)
    batches = tuple(await licences.enterprise_batches(conn, enterprise.id))
    periods = periods_of(enterprise, state, batches, policy)
    holding = await holding_members(conn, enterprise.id)
    pending = settle(
        [m.userid for m in holding], periods, state.settled_through if state else None, at
    )
    lost = {r.member for r in pending}
    return AccountsView(
        enterprise=enterprise,
        state=state,
        trial=periods[0],
        batches=batches,
        periods=periods,
        holding=tuple(m for m in holding if m.userid not in lost),
        pending=tuple(pending),
        at=at,
    )


def unsettled(view: AccountsView) -> bool:
    """Whether an end lies between the settled mark and the view's instant."""
    mark = view.state.settled_through if view.state else None
    return bool(drop_instants(view.periods, mark, view.at))


async def lock_enterprise(conn: AsyncConnection, enterprise_id: str) -> EnterpriseRow:
    """Take the enterprise's write lock for the transaction (see the module docstring)."""
    done = await conn.execute(
        enterprises.update()
        .where(enterprises.c.id == enterprise_id)
        .values(updated_at=enterprises.c.updated_at)
    )
    if done.rowcount != 1:
        raise NotFound(f"enterprise {enterprise_id!r} not found")
    found = await conn.execute(sa.select(enterprises).where(enterprises.c.id == enterprise_id))
    return EnterpriseRow.from_row(found.one())


async def _ensure_state(conn: AsyncConnection, enterprise_id: str, at: datetime) -> None:
    if await read_state(conn, enterprise_id) is None:
        empty = InteropStateRow(
            enterprise_id=enterprise_id,
            trial_ends_at=None,
            trial_accounts=None,
            settled_through=None,
            updated_at=at,
        )
        await conn.execute(interop_state.insert().values(**dataclasses.asdict(empty)))


async def release(
    conn: AsyncConnection, enterprise_id: str, removals: Sequence[Removal], reason: str
) -> None:
    """Record that each member lost its account at its removal's instant."""
    for removal in removals:
        await conn.execute(
            interop_members.update()
            .where(
                interop_members.c.enterprise_id == enterprise_id,
                interop_members.c.userid == removal.member,
                interop_members.c.released_at.is_(None),
            )
            .values(released_at=removal.at, release_reason=reason)
        )


async def settle_enterprise(
    conn: AsyncConnection, enterprise_id: str, now: datetime, policy: InteropPolicy
) -> tuple[AccountsView, list[Removal]]:
    """Lock, record the removals of every end up to ``now``, move the mark to ``now``.

    Returns the view as of ``now`` (nothing pending any more) and what was recorded.  A
    ``now`` behind the mark (another process's clock ahead) settles nothing.
    """
    enterprise = await lock_enterprise(conn, enterprise_id)
    await _ensure_state(conn, enterprise_id, now)
    view = await read_view(conn, enterprise, now, policy)
    mark = view.state.settled_through if view.state else None
    if mark is not None and mark >= now:
        return view, []
    removals = list(view.pending)
    await release(conn, enterprise_id, removals, "expired")
    await conn.execute(
        interop_state.update()
        .where(interop_state.c.enterprise_id == enterprise_id)
        .values(settled_through=now)
    )
    settled = dataclasses.replace(
        view,
        state=dataclasses.replace(view.state, settled_through=now) if view.state else None,
        pending=(),
    )
    return settled, removals
