"""What reaches the customer's endpoint (docs/rules.md §1.2, §4): each accepted WeCom event as
a signed Standard Webhooks delivery through the alerts' outbox (retried; nothing dropped is
ever backfilled), and the interop alerts — expiring, expired, member removed — on the alert
channels.  Local servers stand in for WeCom and for both receivers.  SQLite and PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from standardwebhooks import WebhookVerificationError

from billing.wecom.sender import send_once
from tests.admin_api.conftest import ENT_A, AdminFactory
from tests.admin_api.fake_wecom import event_xml
from tests.admin_api.interop_support import US, Interop, received, start_interop, verified


@pytest.fixture
async def world(make_admin: AdminFactory) -> AsyncIterator[Interop]:
    async with start_interop(make_admin) as found:
        await found.configure()
        yield found


async def send(world: Interop, userid: str | None, at: int) -> None:
    status, text = await world.wecom.send(ENT_A, event_xml(userid=userid, create_time=at))
    assert (status, text) == (200, "success")


def created(bodies: list[dict[str, Any]]) -> list[int]:
    """The CreateTime of each relayed event, in order."""
    return sorted(int(b["data"]["message"]["CreateTime"]) for b in bodies)


async def interop_alerts(world: Interop, count: int, within: float = 10.0) -> list[dict[str, Any]]:
    """The interop alerts the alert webhook received (balance alerts aside), once ``count``
    have arrived."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        found = [
            b
            for b in verified(world.alert_hook, world.alert_secret)
            if str(b["type"]).startswith("interop_")
        ]
        if len(found) >= count:
            return found
        assert asyncio.get_running_loop().time() < deadline, f"{len(found)} of {count} alerts"
        await asyncio.sleep(0.02)


async def quiet(world: Interop) -> None:
    """Let the delivery worker run a few rounds: anything still due would be sent."""
    await asyncio.sleep(0.3)


async def test_an_accepted_event_arrives_signed_with_the_relay_secret(world: Interop):
    await world.assign_all("alice")
    xml = event_xml(userid="alice", extra="<ExternalUserID>wmEx1</ExternalUserID>")
    assert await world.wecom.send(ENT_A, xml) == (200, "success")
    await received(world.receiver, 1)
    [body] = verified(world.receiver, world.relay_secret)
    assert world.receiver.requests[0].headers["webhook-id"] == body["id"]
    assert body["type"] == "wecom_event"
    data = body["data"]
    assert (data["enterprise_id"], data["userid"], data["event"], data["change_type"]) == (
        ENT_A,
        "alice",
        "change_external_contact",
        "add_external_contact",
    )
    assert data["message"]["ExternalUserID"] == "wmEx1"
    assert data["xml"] == xml.decode()
    [stored] = await world.events()
    assert data["wecom_event_id"] == stored["id"]
    with pytest.raises(WebhookVerificationError):
        verified(world.receiver, "whsec_" + "QUFB" * 11)


async def test_dropped_events_are_never_backfilled_after_a_purchase(world: Interop):
    trial_end = world.registered_at + timedelta(hours=2)
    await world.set_trial(trial_ends_at=trial_end)
    await world.assign_all("alice")
    await send(world, "alice", 1)
    await world.delivered()
    world.clock.set(trial_end)
    await send(world, "alice", 2)  # dropped
    await send(world, None, 3)  # dropped
    paid = trial_end + timedelta(hours=1)
    await world.buy(1, paid_at=paid)
    world.clock.set(paid)
    await world.assign_all("alice")
    await send(world, "alice", 4)
    await send(world, None, 5)
    await received(world.receiver, 3)
    await quiet(world)
    assert created(verified(world.receiver, world.relay_secret)) == [1, 4, 5]


async def test_before_a_batch_ends_relayed_at_its_end_dropped(world: Interop):
    await world.set_trial(trial_accounts=0)
    paid = world.registered_at + timedelta(minutes=2)
    order = await world.buy(1, paid_at=paid)
    world.clock.set(paid + timedelta(minutes=1))
    await world.assign_all("alice")
    end = datetime.fromisoformat(order["licence"]["valid_until"])
    world.clock.set(end - US)
    await send(world, "alice", 1)
    await world.delivered()
    world.clock.set(end)
    await send(world, "alice", 2)
    await received(world.receiver, 1)
    await quiet(world)
    assert created(verified(world.receiver, world.relay_secret)) == [1]


async def test_a_duplicate_is_delivered_once_and_a_failing_receiver_is_retried(world: Interop):
    await world.assign_all("alice")
    world.receiver.status = 503
    message = event_xml(userid="alice")
    for _ in range(2):
        assert await world.wecom.send(ENT_A, message) == (200, "success")
    await received(world.receiver, 1)
    await world.attempted(1)  # the 503 booked: its back-off counts from the clock's now
    world.clock.advance(seconds=1)  # past the back-off: the retry falls due
    await received(world.receiver, 2)  # a retry of the ONE delivery
    world.receiver.status = 200
    await world.attempted(2)
    world.clock.advance(seconds=1)
    await received(world.receiver, 3)
    await quiet(world)
    ids = {r.headers["webhook-id"] for r in world.receiver.requests}
    assert len(ids) == 1  # the same webhook-id on every attempt: a receiver drops repeats
    assert world.receiver.requests[-1].body == world.receiver.requests[0].body
    history = await world.server.ok("GET", f"/v1/enterprises/{ENT_A}/alerts/events")
    [relay] = [e for e in history["items"] if e["kind"] == "wecom_event"]
    assert relay["deliveries"][0]["status"] == "sent"


async def _two_batches(world: Interop) -> datetime:
    """Batches of 2 accounts for a year and 1 for two, members m1..m3; the first's end."""
    await world.set_trial(trial_accounts=0)
    paid = world.registered_at + timedelta(minutes=2)
    first = await world.buy(2, paid_at=paid)
    await world.buy(1, years=2, paid_at=paid + timedelta(minutes=1))
    world.clock.set(paid + timedelta(minutes=5))
    await world.assign_all("m1", "m2", "m3")
    return datetime.fromisoformat(first["licence"]["valid_until"])


async def test_members_removed_at_a_batch_end_are_alerted_once(world: Interop):
    await world.configure_alerts()
    end = await _two_batches(world)
    world.clock.set(end)
    assert await world.settle() == 2  # the job: m3 and m2 lose theirs, alerted at once
    bodies = await interop_alerts(world, 3)
    removed = [b["data"] for b in bodies if b["type"] == "interop_member_removed"]
    assert sorted((r["userid"], r["reason"]) for r in removed) == [
        ("m2", "expired"),
        ("m3", "expired"),
    ]
    assert {r["removed_at"] for r in removed} == {end.isoformat()}
    [expired] = [b["data"] for b in bodies if b["type"] == "interop_expired"]
    assert (expired["members_removed"], expired["accounts_after"]) == (2, 1)
    await world.evaluate()
    await quiet(world)
    assert len(await interop_alerts(world, 3)) == 3  # once each


async def test_reminders_only_when_an_end_takes_accounts_and_each_once(world: Interop):
    await world.configure_alerts()
    end = await _two_batches(world)
    world.clock.set(end - timedelta(days=30))
    for _ in range(2):
        await world.evaluate()  # m3 and m2 would lose theirs: reminded, once
    assert [b["data"]["days"] for b in await interop_alerts(world, 1)] == [30]
    world.clock.set(end - timedelta(days=7))
    await world.evaluate()
    assert sorted(b["data"]["days"] for b in await interop_alerts(world, 2)) == [7, 30]
    for userid in ("m3", "m2"):
        freed = await world.server.ops(
            "DELETE", f"/v1/enterprises/{ENT_A}/interop/members/{userid}"
        )
        assert freed.status == 200
    world.clock.set(end - timedelta(days=1))
    # One account stays after the end and one member holds it: nothing to remind of.
    await world.evaluate()
    await quiet(world)
    assert len(await interop_alerts(world, 2)) == 2


async def test_a_trial_ending_to_zero_is_reminded_once_with_the_nearest_day(world: Interop):
    await world.configure_alerts()
    trial_end = world.registered_at + timedelta(days=3)
    # 30 and 7 days before it are past: the change's own evaluation reminds, of 7 days.
    await world.set_trial(trial_ends_at=trial_end)
    await interop_alerts(world, 1)
    world.clock.set(trial_end - timedelta(days=1))
    await world.evaluate()
    await interop_alerts(world, 2)
    world.clock.set(trial_end)
    await world.evaluate()
    await world.evaluate()
    await quiet(world)
    bodies = await interop_alerts(world, 3)
    assert len(bodies) == 3
    assert sorted((b["type"], b["data"].get("days", 0)) for b in bodies) == [
        ("interop_expired", 0),
        ("interop_expiring", 1),
        ("interop_expiring", 7),
    ]
    [expired] = [b["data"] for b in bodies if b["type"] == "interop_expired"]
    assert (expired["period"], expired["accounts_after"]) == ("trial", 0)


async def test_pvgate_wecom_send_relays_one_event_to_its_own_receiver(
    world: Interop, capsys: pytest.CaptureFixture[str]
):
    args = argparse.Namespace(
        admin=world.server.url,
        token=world.server.tokens.ops,
        enterprise=ENT_A,
        userid="demo.member",
        listen="127.0.0.1:0",
        wait=10.0,
    )
    assert await send_once(args) == 0
    out = capsys.readouterr().out
    assert "pvgate answered WeCom: 200 'success'" in out
    assert "signature verified with the relay secret" in out
    assert '"userid": "demo.member"' in out
    [event] = await world.events()
    assert (event["userid"], event["result"]) == ("demo.member", "relayed")
