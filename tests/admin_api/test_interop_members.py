"""Interop accounts held over time (docs/rules.md §1.2): the trial, licence batches, member
assignment and its limit, and who loses an account — the last assigned first, at the
exact instant a batch or the trial ends — with a hand-moved clock.  SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from billing.interop.tables import interop_members
from billing.rules.calendar import add_months, add_years
from tests.admin_api.conftest import ENT_A, AdminFactory, expect
from tests.admin_api.interop_support import US, Interop, start_interop


@pytest.fixture
async def world(make_admin: AdminFactory) -> AsyncIterator[Interop]:
    async with start_interop(make_admin) as found:
        yield found


async def released(world: Interop) -> dict[str, tuple[datetime, str]]:
    async with world.server.db.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(
                interop_members.c.userid,
                interop_members.c.released_at,
                interop_members.c.release_reason,
            ).where(interop_members.c.released_at.is_not(None))
        )
        return {r.userid: (r.released_at, r.release_reason) for r in rows}


async def test_the_trial_runs_three_calendar_months_with_trial_accounts(world: Interop):
    view = await world.view()
    trial = view["trial"]
    assert datetime.fromisoformat(trial["starts_at"]) == world.registered_at
    assert datetime.fromisoformat(trial["ends_at"]) == add_months(world.registered_at, 3)
    assert (trial["accounts"], trial["active"], view["active_accounts"]) == (10, True, 10)
    assert view["next_expiry"]["ending"] == ["trial"]
    assert (view["next_expiry"]["accounts_before"], view["next_expiry"]["accounts_after"]) == (
        10,
        0,
    )


async def test_assignment_beyond_the_active_count_is_refused(world: Interop):
    await world.set_trial(trial_accounts=2)
    await world.assign_all("alice", "bob")
    refused = await world.assign("carol")
    expect(refused, 422, "interop_no_free_account")
    assert "2 active interop accounts" in refused.body["error"]["message"]
    expect(await world.assign("alice"), 409, "interop_member_assigned")
    freed = await world.server.ops("DELETE", f"/v1/enterprises/{ENT_A}/interop/members/bob")
    assert expect(freed, 200)["release_reason"] == "freed"
    expect(await world.assign("carol"), 201)
    assert await world.holding() == ["alice", "carol"]
    gone = await world.server.ops("DELETE", f"/v1/enterprises/{ENT_A}/interop/members/bob")
    expect(gone, 404, "interop_member_not_assigned")
    view = await world.view()
    assert (view["active_accounts"], view["assigned"], view["free"]) == (2, 2, 0)


async def test_two_members_racing_for_the_last_account_get_it_once(world: Interop):
    await world.set_trial(trial_accounts=1)
    replies = await asyncio.gather(*(world.assign(f"m{i}") for i in range(4)))
    assert sorted(r.status for r in replies) == [201, 422, 422, 422]
    assert len(await world.holding()) == 1


async def test_the_last_assigned_lose_their_accounts_at_the_exact_instant(world: Interop):
    await world.set_trial(trial_accounts=0)
    paid_a = world.registered_at + timedelta(minutes=5)
    paid_b = world.registered_at + timedelta(minutes=10)
    await world.buy(3, paid_at=paid_a)
    await world.buy(2, paid_at=paid_b)
    world.clock.set(paid_b + timedelta(minutes=1))
    await world.assign_all("m1", "m2", "m3", "m4", "m5")
    expect(await world.assign("m6"), 422, "interop_no_free_account")
    end_a = add_years(paid_a, 1)
    world.clock.set(end_a - US)
    assert await world.holding() == ["m1", "m2", "m3", "m4", "m5"]
    assert await world.settle() == 0
    world.clock.set(end_a)
    # Before the job runs the view already applies the end ...
    assert await world.holding() == ["m1", "m2"]
    assert await released(world) == {}
    # ... and the job records it at the end's instant, however late it runs.
    world.clock.advance(minutes=2)  # batch B still runs 3 minutes
    assert await world.settle() == 3
    assert await released(world) == {m: (end_a, "expired") for m in ("m3", "m4", "m5")}
    assert await world.settle() == 0  # once
    removed = [
        r for r in await world.server.audit(ENT_A) if r["action"] == "interop.members_removed"
    ]
    assert [x["member"] for x in removed[0]["after"]["removed"]] == ["m5", "m4", "m3"]
    assert removed[0]["actor"] == "interop-expiry"


async def test_after_downtime_the_job_catches_up_every_end_in_order(world: Interop):
    await world.set_trial(trial_accounts=2)
    paid = world.registered_at + timedelta(minutes=5)
    await world.buy(2, paid_at=paid)
    world.clock.set(paid + timedelta(minutes=1))
    await world.assign_all("m1", "m2", "m3", "m4")
    trial_end = add_months(world.registered_at, 3)
    batch_end = add_years(paid, 1)
    world.clock.set(batch_end + timedelta(days=3))  # the job was down through both ends
    assert await world.settle() == 4
    assert await released(world) == {
        "m3": (trial_end, "expired"),
        "m4": (trial_end, "expired"),
        "m1": (batch_end, "expired"),
        "m2": (batch_end, "expired"),
    }
    # A later purchase gives nobody an account back: it is assigned again.
    await world.buy(1, paid_at=world.registered_at + timedelta(minutes=30))
    assert await world.holding() == []


async def test_ops_set_the_trial_and_a_lower_count_takes_accounts_at_once(world: Interop):
    await world.assign_all("a", "b", "c")
    reported = world.registered_at + timedelta(days=40)
    view = await world.set_trial(trial_ends_at=reported, trial_accounts=1)
    assert datetime.fromisoformat(view["trial"]["ends_at"]) == reported
    assert (view["trial"]["accounts_set_by_ops"], view["trial"]["ends_at_set_by_ops"]) == (
        True,
        True,
    )
    assert [m["userid"] for m in view["members"]] == ["a"]
    assert await released(world) == {
        "b": (world.clock.now(), "reduced"),
        "c": (world.clock.now(), "reduced"),
    }
    rows = await world.server.audit(ENT_A)
    update = next(r for r in rows if r["action"] == "interop.trial_update")
    assert (update["reason"], update["before"]["accounts"], update["after"]["accounts"]) == (
        "as WeCom reports",
        10,
        1,
    )
    # Only ops may change the trial.
    for token in (world.server.tokens.merchant_a, world.server.tokens.partner_a):
        reply = await world.server.api.call(
            "PATCH", f"/v1/enterprises/{ENT_A}/interop", token, {"trial_accounts": 9, "reason": "x"}
        )
        expect(reply, 403, "forbidden")
    # The trial ends at the reported instant.
    world.clock.set(reported - US)
    assert (await world.view())["active_accounts"] == 1
    world.clock.set(reported)
    assert (await world.view())["active_accounts"] == 0
    assert await world.holding() == []


async def test_a_trial_end_set_in_the_past_takes_accounts_now(world: Interop):
    await world.assign_all("a", "b")
    world.clock.advance(days=20)
    earlier = world.registered_at + timedelta(days=10)
    view = await world.set_trial(trial_ends_at=earlier)
    assert (view["active_accounts"], view["members"]) == (0, [])
    assert await released(world) == {
        "a": (world.clock.now(), "reduced"),
        "b": (world.clock.now(), "reduced"),
    }
