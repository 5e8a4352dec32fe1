"""Expiry reminders at 30, 7 and 1 days and at expiry, once each (docs/rules.md §4).

The clock is the test's: it is moved, never slept on.  The scheduler evaluates an
enterprise when its stored next due moment has come, so a new billing process (a new `Rig`
on the same ledger) after downtime sends what fell due meanwhile, once.
"""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from billing.alerts.kinds import SETTINGS
from billing.schema import alert_settings
from tests.alerts.conftest import RigFactory
from tests.alerts.rig import ENT, Clock, Rig, webhook
from tests.alerts.servers import Receiver

DAY = timedelta(days=1)


async def next_due(rig: Rig):
    return await rig.db.scalar(
        sa.select(alert_settings.c.next_due_at).where(alert_settings.c.enterprise_id == ENT)
    )


async def due_kinds(rig: Rig) -> list[tuple[str, int | None]]:
    events = await rig.alerts.scheduler.run_due()
    return [(e.kind, e.payload["data"].get("days")) for e in events]


async def test_each_reminder_and_the_expiry_once(rig: Rig, clock: Clock, receiver: Receiver):
    await rig.enterprise()
    start = clock()
    expires = start + 40 * DAY
    await rig.credit(500, bucket="gift-1", expires_in=40 * DAY)
    await rig.configure(webhook(receiver.hook), threshold=0)
    assert await rig.evaluate(SETTINGS) == []  # 40 days left: nothing yet
    assert await next_due(rig) == expires - 30 * DAY

    clock.now = expires - 30 * DAY - timedelta(seconds=1)
    assert await due_kinds(rig) == []
    for left, days in ((30 * DAY, 30), (7 * DAY, 7), (1 * DAY, 1)):
        clock.now = expires - left + timedelta(seconds=1)
        assert await due_kinds(rig) == [("package_expiring", days)]
        assert await due_kinds(rig) == []  # once
        assert await rig.alerts.scheduler.sweep() == []
    clock.now = expires + timedelta(seconds=1)
    found = await rig.alerts.scheduler.run_due()
    assert sorted(e.kind for e in found) == ["exhausted", "package_expired"]
    expired = next(e for e in found if e.kind == "package_expired")
    assert expired.payload["data"]["cancelled_pv"] == 500
    assert expired.payload["data"]["bucket"]["id"] == "gift-1"
    assert await next_due(rig) is None  # nothing left to wait for
    clock.advance(days=3)
    assert await rig.alerts.scheduler.sweep() == []
    events = await rig.events()
    assert [(e.kind, e.payload["data"]["days"]) for e in events[:3]] == [
        ("package_expiring", 30),
        ("package_expiring", 7),
        ("package_expiring", 1),
    ]
    assert sorted(e.kind for e in events[3:]) == ["exhausted", "package_expired"]

    assert await rig.deliver() == 5
    texts = {r.payload["type"] for r in receiver.received}
    assert texts == {"package_expiring", "package_expired", "exhausted"}


async def test_reminders_due_during_downtime_go_out_once(make_rig: RigFactory, clock: Clock):
    first = make_rig()
    await first.enterprise()
    await first.credit(80, bucket="gift-1", expires_in=40 * DAY)
    await first.configure(threshold=0)
    await first.evaluate(SETTINGS)
    await first.close()  # billing stops; 30- and 7-day moments pass while it is down

    clock.advance(days=35)
    restarted = make_rig(owner="worker-2")
    found = await restarted.alerts.scheduler.run_due()
    assert [(e.kind, e.payload["data"]["days"]) for e in found] == [("package_expiring", 7)]
    again = make_rig(owner="worker-3")  # and another restart sends nothing more
    assert await again.alerts.scheduler.run_due() == []
    assert await again.alerts.scheduler.sweep() == []
    clock.advance(days=4, hours=1)  # 1 day left
    assert [e.payload["data"]["days"] for e in await again.alerts.scheduler.run_due()] == [1]


async def test_a_used_up_package_gets_no_reminder(rig: Rig, clock: Clock):
    await rig.enterprise()
    await rig.credit(10, bucket="gift-1", expires_in=5 * DAY)
    await rig.credit(10, bucket="gift-2", expires_in=50 * DAY)
    await rig.configure(threshold=0)
    await rig.spend(10)  # gift-1 (the first granted) is used up
    assert [e.kind for e in await rig.evaluate(SETTINGS)] == []
    clock.advance(days=5, seconds=1)  # gift-1 expires with nothing left
    assert await rig.alerts.scheduler.run_due() == []
    assert await rig.alerts.scheduler.sweep() == []
