"""Operations on interop accounts: assign and free members, ops' trial changes, settling.

Each is one ledger transaction under the enterprise's lock that first settles every end up
to now (`billing.interop.accounts.settle_enterprise`), then makes its change, with its
audit rows: ``interop.member_assign``, ``interop.member_free``, ``interop.trial_update``
and, for members who lost their account, ``interop.members_removed`` (with the instant).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.audit import Auditor
from billing.db import Database
from billing.interop.accounts import (
    AccountsView,
    InteropPolicy,
    holding_members,
    read_view,
    release,
    settle_enterprise,
)
from billing.interop.errors import MemberHoldsAccount, MemberHoldsNoAccount, NoFreeAccount
from billing.interop.records import MemberRow
from billing.interop.rules import Removal, excess
from billing.interop.tables import interop_members, interop_state


async def record_removals(
    conn: AsyncConnection,
    audit: Auditor,
    enterprise_id: str,
    removals: Sequence[Removal],
    reason: str,
) -> None:
    """The audit row of members who lost their accounts, in their transaction."""
    if not removals:
        return
    await audit(
        conn,
        "interop.members_removed",
        enterprise_id,
        None,
        {"reason": reason, "removed": [dataclasses.asdict(r) for r in removals]},
    )


async def settle(
    db: Database,
    audit: Auditor,
    enterprise_id: str,
    now: datetime,
    policy: InteropPolicy,
) -> list[Removal]:
    """Record what every end up to ``now`` took away (the scheduler job, per enterprise)."""
    async with db.begin() as conn:
        _, removals = await settle_enterprise(conn, enterprise_id, now, policy)
        await record_removals(conn, audit, enterprise_id, removals, "expired")
    return removals


async def assign_member(
    db: Database,
    audit: Auditor,
    enterprise_id: str,
    userid: str,
    *,
    actor: str,
    now: datetime,
    policy: InteropPolicy,
) -> MemberRow:
    """Give ``userid`` one of the free active accounts, or refuse (`NoFreeAccount`)."""
    async with db.begin() as conn:
        view, removals = await settle_enterprise(conn, enterprise_id, now, policy)
        await record_removals(conn, audit, enterprise_id, removals, "expired")
        if view.holds(userid):
            raise MemberHoldsAccount(userid)
        if len(view.holding) >= view.active:
            raise NoFreeAccount(enterprise_id, view.active, len(view.holding))
        await conn.execute(
            interop_members.insert().values(
                enterprise_id=enterprise_id, userid=userid, assigned_at=now, assigned_by=actor
            )
        )
        member = next(m for m in await holding_members(conn, enterprise_id) if m.userid == userid)
        await audit(conn, "interop.member_assign", enterprise_id, None, member)
        return member


async def free_member(
    db: Database,
    audit: Auditor,
    enterprise_id: str,
    userid: str,
    *,
    now: datetime,
    policy: InteropPolicy,
) -> MemberRow:
    """Take ``userid``'s account back now; the account is free for another member."""
    async with db.begin() as conn:
        view, removals = await settle_enterprise(conn, enterprise_id, now, policy)
        await record_removals(conn, audit, enterprise_id, removals, "expired")
        held = next((m for m in view.holding if m.userid == userid), None)
        if held is None:
            raise MemberHoldsNoAccount(userid)
        freed = dataclasses.replace(held, released_at=now, release_reason="freed")
        await release(conn, enterprise_id, [Removal(userid, now, view.active)], "freed")
        await audit(conn, "interop.member_free", enterprise_id, held, freed)
        return freed


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TrialChange:
    """Ops' change of the trial: the end WeCom reports, and/or its account count."""

    ends_at: datetime | None = None
    accounts: int | None = None
    reason: str


async def change_trial(
    db: Database,
    audit: Auditor,
    enterprise_id: str,
    change: TrialChange,
    *,
    now: datetime,
    policy: InteropPolicy,
) -> AccountsView:
    """Set the trial's end and/or accounts; a count lowered now takes accounts away now.

    An end set in the past is not applied retroactively: the members it leaves without an
    account lose it now, at the change — events relayed meanwhile cannot be taken back.
    """
    async with db.begin() as conn:
        view, removals = await settle_enterprise(conn, enterprise_id, now, policy)
        await record_removals(conn, audit, enterprise_id, removals, "expired")
        values: dict[str, object] = {"updated_at": now}
        if change.ends_at is not None:
            values["trial_ends_at"] = change.ends_at
        if change.accounts is not None:
            values["trial_accounts"] = change.accounts
        await conn.execute(
            sa.update(interop_state)
            .where(interop_state.c.enterprise_id == enterprise_id)
            .values(**values)
        )
        after = await read_view(conn, view.enterprise, now, policy)
        reduced = excess([m.userid for m in after.holding], after.active, now)
        await release(conn, enterprise_id, reduced, "reduced")
        await record_removals(conn, audit, enterprise_id, reduced, "reduced")
        before_trial = dataclasses.asdict(view.trial)
        await audit(
            conn,
            "interop.trial_update",
            enterprise_id,
            before_trial,
            dataclasses.asdict(after.trial),
            change.reason,
        )
        return await read_view(conn, view.enterprise, now, policy)
