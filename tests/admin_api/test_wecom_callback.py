"""The WeCom callback (docs/rules.md §1.2, docs/architecture.md §5): a local WeCom stand-in
encrypts and signs like WeCom and calls pvgate; the relay decision follows the accounts at
the exact instant, on a hand-moved clock.  SQLite and PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

from billing.interop.settings import InteropSection
from billing.interop.tables import wecom_events
from billing.rules.calendar import add_years
from billing.settings import BillingSettings
from tests.admin_api.conftest import ENT_A, ENT_B, AdminFactory, expect
from tests.admin_api.fake_wecom import Keys, event_xml
from tests.admin_api.interop_support import US, Interop, start_interop, wecom_events_total


@pytest.fixture
async def world(make_admin: AdminFactory) -> AsyncIterator[Interop]:
    async with start_interop(make_admin) as found:
        await found.configure()
        yield found


async def stored(world: Interop) -> int:
    return int(await world.server.db.scalar(sa.select(sa.func.count()).select_from(wecom_events)))


def _created(event: dict[str, object]) -> int:
    found = re.search(r"<CreateTime>(\d+)</CreateTime>", str(event["message"]))
    assert found is not None
    return int(found.group(1))


async def results(world: Interop) -> list[tuple[str | None, str]]:
    """(userid, result) of every stored event, in the order WeCom sent them."""
    return [(e["userid"], e["result"]) for e in sorted(await world.events(), key=_created)]


async def send(world: Interop, userid: str | None, *, at: int = 0) -> tuple[int, str]:
    return await world.wecom.send(ENT_A, event_xml(userid=userid, create_time=1_700_000_000 + at))


async def test_url_verification_answers_the_decrypted_echostr(world: Interop):
    status, text = await world.wecom.verify(ENT_A, "1616140317555161061")
    assert (status, text) == (200, "1616140317555161061")
    status, _ = await world.wecom.verify(ENT_A, "1616140317555161061", sign_with="WrongToken")
    assert status == 403


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param({"sign_with": "WrongToken"}, id="wrong-signature"),
        pytest.param({"keys": {"corp_id": "ww0000000000000000"}}, id="wrong-corp-id"),
        pytest.param({"tamper": "in_transit"}, id="tampered-ciphertext"),
        pytest.param({"tamper": "resigned"}, id="tampered-and-resigned"),
        pytest.param({"keys": {"aes_key": "A" * 43}}, id="wrong-aes-key"),
        pytest.param({"timestamp": 1_700_000_000}, id="replayed-a-year-later"),
        pytest.param({"timestamp": "soon"}, id="timestamp-not-a-number"),
    ],
)
async def test_what_does_not_authenticate_is_a_403_and_nothing_is_stored(
    world: Interop, spec: dict[str, object]
):
    await world.assign_all("alice")
    before = wecom_events_total("bad_signature")
    status, text = await world.wecom.send(ENT_A, event_xml(userid="alice"), **spec)
    assert status == 403, text
    assert await stored(world) == 0
    assert wecom_events_total("bad_signature") == before + 1
    assert world.receiver.requests == []


async def test_an_unknown_enterprise_or_one_without_settings_answers_alike(world: Interop):
    for enterprise in ("ent-nope", ENT_B):
        status, text = await world.wecom.send(enterprise, event_xml())
        assert (status, text) == (403, "the callback does not authenticate")
    assert await stored(world) == 0


async def test_relay_during_the_trial_then_dropped_then_relayed_after_a_purchase(world: Interop):
    # Payments are confirmed at most a day ahead: the trial ends as WeCom reports, soon.
    trial_end = world.registered_at + timedelta(hours=2)
    await world.set_trial(trial_ends_at=trial_end)
    await world.assign_all("alice")
    assert await send(world, "alice", at=1) == (200, "success")
    assert await send(world, None, at=2) == (200, "success")  # names no member
    world.clock.set(trial_end)
    assert await send(world, "alice", at=3) == (200, "success")  # acknowledged all the same
    assert await send(world, None, at=4) == (200, "success")
    paid = trial_end + timedelta(hours=1)
    await world.buy(1, paid_at=paid)
    world.clock.set(paid)
    assert await send(world, None, at=5) == (200, "success")  # the enterprise holds one
    assert await send(world, "alice", at=6) == (200, "success")  # alice lost hers
    await world.assign_all("alice")
    assert await send(world, "alice", at=7) == (200, "success")
    assert await results(world) == [
        ("alice", "relayed"),
        (None, "relayed"),
        ("alice", "dropped_inactive"),
        (None, "dropped_inactive"),
        (None, "relayed"),
        ("alice", "dropped_inactive"),
        ("alice", "relayed"),
    ]


async def test_at_the_exact_expiry_instant_of_a_batch_the_event_is_dropped(world: Interop):
    await world.set_trial(trial_accounts=0)
    paid = world.registered_at + timedelta(minutes=2)
    await world.buy(1, paid_at=paid)
    world.clock.set(paid + timedelta(minutes=1))
    await world.assign_all("alice")
    end = add_years(paid, 1)
    world.clock.set(end - US)
    await send(world, "alice", at=1)
    await send(world, None, at=2)
    world.clock.set(end)  # the expiry job has not run: the decision does not wait for it
    await send(world, "alice", at=3)
    await send(world, None, at=4)
    assert await results(world) == [
        ("alice", "relayed"),
        (None, "relayed"),
        ("alice", "dropped_inactive"),
        (None, "dropped_inactive"),
    ]


async def test_a_member_without_an_account_is_dropped_while_another_is_relayed(world: Interop):
    await world.assign_all("alice")
    before = (wecom_events_total("relayed"), wecom_events_total("dropped_inactive"))
    await send(world, "carol", at=1)
    await send(world, "alice", at=2)
    assert await results(world) == [("carol", "dropped_inactive"), ("alice", "relayed")]
    after = (wecom_events_total("relayed"), wecom_events_total("dropped_inactive"))
    assert after == (before[0] + 1, before[1] + 1)
    dropped = await world.server.ok(
        "GET", f"/v1/enterprises/{ENT_A}/wecom/events?result=dropped_inactive"
    )
    assert [e["userid"] for e in dropped["items"]] == ["carol"]
    assert "<UserID><![CDATA[carol]]></UserID>" in dropped["items"][0]["message"]


async def test_the_same_message_within_24_hours_is_relayed_once(world: Interop):
    await world.assign_all("alice")
    message = event_xml(userid="alice")
    before = wecom_events_total("duplicate")
    for _ in range(3):  # WeCom retrying; each encryption differs, the message does not
        assert await world.wecom.send(ENT_A, message) == (200, "success")
        world.clock.advance(seconds=5)
    world.clock.advance(hours=23, minutes=59)
    assert await world.wecom.send(ENT_A, message) == (200, "success")
    world.clock.advance(minutes=2)  # 24 h after it was first seen: a new message
    assert await world.wecom.send(ENT_A, message) == (200, "success")
    assert [e["result"] for e in reversed(await world.events())] == [
        "relayed",
        "duplicate",
        "duplicate",
        "duplicate",
        "relayed",
    ]
    assert wecom_events_total("duplicate") == before + 3


async def test_a_msgid_is_the_key_when_there_is_one(world: Interop):
    await world.assign_all("alice")
    for at in (1, 2):  # the content differs, the MsgId does not
        xml = event_xml(userid="alice", create_time=at, extra="<MsgId>42</MsgId>")
        await world.wecom.send(ENT_A, xml)
    assert [(e["msg_key"], e["result"]) for e in sorted(await world.events(), key=_created)] == [
        ("id:42", "relayed"),
        ("id:42", "duplicate"),
    ]


async def test_external_chat_events_and_other_events_are_stored_with_their_kind(world: Interop):
    xml = event_xml(
        "change_external_chat",
        "update",
        userid=None,
        extra="<UpdateDetail>add_member</UpdateDetail>",
    )
    await world.wecom.send(ENT_A, xml)
    await world.wecom.send(ENT_A, event_xml("change_contact", "update_user", userid="bob"))
    found = sorted((e["event"], e["change_type"], e["result"]) for e in await world.events())
    assert found == [
        ("change_contact", "update_user", "dropped_inactive"),
        ("change_external_chat", "update", "relayed"),
    ]


async def test_a_body_over_the_cap_and_a_burst_over_the_rate_are_refused(make_admin: AdminFactory):
    section = InteropSection(
        callback_max_body_bytes=1024, callback_rate_per_s=0.1, callback_burst=3
    )
    async with start_interop(make_admin, BillingSettings(interop=section)) as world:
        await world.configure()
        big = event_xml(userid="alice", extra=f"<Pad>{'x' * 2000}</Pad>")
        status, _ = await world.wecom.send(ENT_A, big)
        assert status == 413
        statuses = [(await world.wecom.send(ENT_A, event_xml(create_time=i)))[0] for i in range(3)]
        assert statuses == [200, 200, 429]  # the refused big one took a token too
        other = await world.wecom.send(ENT_B, event_xml())
        assert other[0] == 403  # another enterprise id has its own bucket
        assert await stored(world) == 2


async def test_missing_parameters_or_a_body_that_is_not_wecom_xml_are_400(world: Interop):
    session = world.wecom.session
    url = f"{world.server.url}/wecom/callback/{ENT_A}"
    async with session.post(url, data=b"<xml/>") as resp:
        assert resp.status == 400
    params = world.wecom.params(Keys(), "AAAA")
    for body in (b"not xml", b"<xml><Other/></xml>", b'<!DOCTYPE x [<!ENTITY a "b">]><xml/>'):
        async with session.post(url, params=params, data=body) as resp:
            assert resp.status == 400, body
    assert await stored(world) == 0


async def test_settings_are_masked_on_read_and_audited_masked(world: Interop):
    shown = await world.server.ok("GET", f"/v1/enterprises/{ENT_A}/wecom")
    keys = Keys()
    assert shown["token"] == "******"  # short: all hidden
    assert shown["encoding_aes_key"] == "*" * 39 + keys.aes_key[-4:]
    assert (shown["corp_id"], shown["callback_path"]) == (
        keys.corp_id,
        f"/wecom/callback/{ENT_A}",
    )
    audit = [r for r in await world.server.audit(ENT_A) if r["action"] == "wecom.settings_update"]
    assert keys.aes_key not in str(audit)
    assert audit[0]["after"]["token"] == "******"
    bad = {**dataclasses.asdict(keys), "encoding_aes_key": "short"}
    body = {
        "token": bad["token"],
        "encoding_aes_key": bad["encoding_aes_key"],
        "corp_id": bad["corp_id"],
        "relay_url": "https://example.com/hook",
    }
    expect(await world.server.ops("PUT", f"/v1/enterprises/{ENT_A}/wecom", body), 400)
    body["encoding_aes_key"] = keys.aes_key
    for url in ("ftp://example.com/x", "https://10.0.0.1/hook", "https://user:pw@example.com/"):
        reply = await world.server.ops(
            "PUT", f"/v1/enterprises/{ENT_A}/wecom", {**body, "relay_url": url}
        )
        expect(reply, 400, "invalid_request")
