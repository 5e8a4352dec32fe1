"""The alert routes over HTTP against the full billing app (docs/rules.md §4).

Settings and channels with their secrets masked, every field validated naming it, tenant
scope (merchant: its own only; partner: its enterprises; 404 otherwise), audit rows without
secrets, the evaluation a settings change or a top-up makes, history with deliveries and
attempts, test messages, secret rotation and ops' retry — the background worker delivering
to a real receiver on loopback.  Tests taking ``admin`` run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from billing.settings import AlertsSection, BillingSettings
from tests.admin_api.conftest import ENT_A, ENT_B, AdminFactory, AdminServer, expect
from tests.alerts.servers import Answer, Receiver

ALERTS = f"/v1/enterprises/{ENT_A}/alerts"
KEY = str(uuid.uuid4())
SETTINGS = BillingSettings(
    alerts=AlertsSection(
        allow_http=True, allow_addresses=("127.0.0.1",), retry_jitter=0.0, poll_interval_s=0.05
    )
)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def alerts_admin(make_admin: AdminFactory) -> AdminServer:
    return await make_admin(SETTINGS)


@pytest.fixture
async def sqlite_alerts_admin(make_sqlite_admin: AdminFactory) -> AdminServer:
    return await make_sqlite_admin(SETTINGS)


def body(*channels: dict[str, Any], threshold: int = 100, **fields: Any) -> dict[str, Any]:
    return {"threshold_pv": threshold, "channels": list(channels), **fields}


def hook(url: str, **fields: Any) -> dict[str, Any]:
    return {"type": "webhook", "url": url, **fields}


def robot(key: str = KEY, **fields: Any) -> dict[str, Any]:
    return {"type": "wecom_robot", "key": key, **fields}


def app(**fields: Any) -> dict[str, Any]:
    return {
        "type": "wecom_app",
        "corp_id": "wwcorp1",
        "agent_id": 1000002,
        "secret": "app-secret-0123",
        "to_users": ["alice", "bob"],
        **fields,
    }


async def events(server: AdminServer, enterprise_id: str = ENT_A, **params: str) -> list[Any]:
    found = expect(
        await server.ops("GET", f"/v1/enterprises/{enterprise_id}/alerts/events", params=params),
        200,
    )
    items: list[Any] = found["items"]
    return items


async def until(check: Any, within: float = 10.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        found = await check()
        if found:
            return found
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_settings_round_trip_with_secrets_masked(
    alerts_admin: AdminServer, receiver: Receiver
):
    put = expect(
        await alerts_admin.ops("PUT", ALERTS, body(hook(receiver.hook), robot(), app())), 200
    )
    assert (put["enterprise_id"], put["configured"], put["threshold_pv"]) == (ENT_A, True, 100)
    assert put["expiry_reminder_days"] == [30, 7, 1]
    webhook, bot, wecom_app = put["channels"]
    secret = webhook["signing_secret"]
    assert secret.startswith("whsec_")
    assert len(secret) > 40
    assert bot["key"] == "****" + KEY[-4:]
    assert wecom_app["secret"] == "****0123"
    assert wecom_app["to_users"] == ["alice", "bob"]

    got = expect(await alerts_admin.ops("GET", ALERTS), 200)
    shown = got["channels"]
    assert shown[0]["signing_secret"] == "whsec_****" + secret[-4:]
    assert shown[0]["url"] == receiver.hook
    assert (shown[1]["key"], shown[2]["secret"]) == (bot["key"], wecom_app["secret"])
    raw = (await alerts_admin.ops("GET", ALERTS)).raw
    for hidden in (secret, KEY, "app-secret-0123"):
        assert hidden.encode() not in raw

    # Keeping channels by id keeps their secrets; a channel left out is removed.
    kept = body(
        {"type": "webhook", "id": webhook["id"], "url": receiver.hook},
        {"type": "wecom_robot", "id": bot["id"], "enabled": False},
        threshold=5,
        expiry_reminder_days=[14, 3],
    )
    again = expect(await alerts_admin.ops("PUT", ALERTS, kept), 200)
    assert [c["id"] for c in again["channels"]] == [webhook["id"], bot["id"]]
    assert again["channels"][0]["signing_secret"] == "whsec_****" + secret[-4:]
    assert (again["channels"][1]["enabled"], again["channels"][1]["key"]) == (False, bot["key"])
    assert (again["threshold_pv"], again["expiry_reminder_days"]) == (5, [14, 3])

    fresh = expect(await alerts_admin.ops("GET", f"/v1/enterprises/{ENT_B}/alerts"), 200)
    assert (fresh["configured"], fresh["threshold_pv"], fresh["channels"]) == (False, 0, [])


C0 = "body.channels.0"
APP = f"{C0}.wecom_app"
USERS_1001 = [f"u{i}" for i in range(1001)]
BAD = [
    pytest.param(body(hook("ftp://example.com/x")), f"{C0}.url", id="url-scheme"),
    pytest.param(body(hook("https:///x")), f"{C0}.url", id="url-no-host"),
    pytest.param(body(hook("https://10.0.0.1/x")), f"{C0}.url", id="url-private"),
    pytest.param(body(hook("https://[::ffff:10.0.0.1]/x")), f"{C0}.url", id="url-mapped"),
    pytest.param(body(hook("https://u:p@example.com/x")), f"{C0}.url", id="url-creds"),
    pytest.param(body(hook("https://example.com/\n")), f"{C0}.webhook.url", id="url-ctrl"),
    pytest.param(body(robot("not-a-key")), f"{C0}.wecom_robot.key", id="robot-key"),
    pytest.param(body({"type": "wecom_robot"}), f"{C0}.key", id="robot-key-missing"),
    pytest.param(body(app(to_users=[])), f"{APP}.to_users", id="no-users"),
    pytest.param(body(app(to_users=USERS_1001)), f"{APP}.to_users", id="1001-users"),
    pytest.param(body(app(to_users=["bad user"])), f"{APP}.to_users.0", id="user-charset"),
    pytest.param(body(app(to_users=["a", "a"])), f"{APP}.to_users", id="user-twice"),
    pytest.param(body(app(agent_id="1")), f"{APP}.agent_id", id="agent-id-text"),
    pytest.param(body(app(corp_id="")), f"{APP}.corp_id", id="corp-id"),
    pytest.param(body(threshold=-1), "body.threshold_pv", id="threshold-negative"),
    pytest.param({"threshold_pv": "100"}, "body.threshold_pv", id="threshold-text"),
    pytest.param({"threshold_pv": True}, "body.threshold_pv", id="threshold-bool"),
    pytest.param(body(expiry_reminder_days=[0]), "body.expiry_reminder_days.0", id="day-0"),
    pytest.param(body(expiry_reminder_days=[400]), "body.expiry_reminder_days.0", id="day-400"),
    pytest.param(body(expiry_reminder_days=[7, 7]), "body.expiry_reminder_days", id="day-twice"),
    pytest.param(body(expiry_reminder_days=list(range(1, 12))), "body.expiry_reminder_days",
                 id="days-11"),
    pytest.param(body({"type": "sms"}), C0, id="channel-type"),
    pytest.param(body(hook("https://example.com/x", id="ch_nope")), f"{C0}.id", id="unknown-id"),
    pytest.param(body(threshold=1, colour="red"), "body.colour", id="unknown-field"),
]  # fmt: skip


@pytest.mark.parametrize(("sent", "field"), BAD)
async def test_every_field_is_validated_naming_it(
    sqlite_alerts_admin: AdminServer, sent: dict[str, Any], field: str
):
    before = await sqlite_alerts_admin.audit(ENT_A)
    reply = await sqlite_alerts_admin.ops("PUT", ALERTS, sent)
    assert (reply.status, reply.code) == (400, "invalid_request"), reply
    assert reply.body["error"]["message"].startswith(field), reply
    assert await sqlite_alerts_admin.audit(ENT_A) == before
    assert expect(await sqlite_alerts_admin.ops("GET", ALERTS), 200)["configured"] is False


async def test_a_channel_keeps_its_type(sqlite_alerts_admin: AdminServer):
    put = expect(await sqlite_alerts_admin.ops("PUT", ALERTS, body(robot())), 200)
    changed = body(hook("https://example.com/x", id=put["channels"][0]["id"]))
    reply = await sqlite_alerts_admin.ops("PUT", ALERTS, changed)
    expect(reply, 400, "invalid_request")
    assert reply.body["error"]["message"].startswith("body.channels.0.type")


async def test_merchants_and_partners_reach_their_own_only(alerts_admin: AdminServer):
    t = alerts_admin.tokens
    own = body(threshold=10)
    for token in (t.merchant_a, t.partner_a):
        expect(await alerts_admin.api.call("PUT", ALERTS, token, own), 200)
        expect(await alerts_admin.api.call("GET", ALERTS, token), 200)
        expect(await alerts_admin.api.call("GET", f"{ALERTS}/events", token), 200)
    for token in (t.merchant_b, t.partner_b):
        for method, path, sent in (
            ("GET", ALERTS, None),
            ("PUT", ALERTS, own),
            ("GET", f"{ALERTS}/events", None),
            ("POST", f"{ALERTS}/test", {"channel_id": "ch_x"}),
            ("POST", f"{ALERTS}/secret", {"channel_id": "ch_x"}),
        ):
            reply = await alerts_admin.api.call(method, path, token, sent)
            expect(reply, 404, "not_found")
    for token in (t.merchant_a, t.partner_a):
        reply = await alerts_admin.api.call("POST", "/v1/alerts/deliveries/dlv_x/retry", token)
        expect(reply, 403, "forbidden")
    expect(await alerts_admin.ops("POST", "/v1/alerts/deliveries/dlv_x/retry"), 404, "not_found")


async def test_every_change_is_audited_without_secrets(
    alerts_admin: AdminServer, receiver: Receiver
):
    put = expect(await alerts_admin.ops("PUT", ALERTS, body(hook(receiver.hook), robot())), 200)
    channel = put["channels"][0]["id"]
    rotated = expect(
        await alerts_admin.ops("POST", f"{ALERTS}/secret", {"channel_id": channel}), 200
    )
    expect(await alerts_admin.ops("POST", f"{ALERTS}/test", {"channel_id": channel}), 200)
    rows = await alerts_admin.audit(ENT_A)
    actions = [r["action"] for r in rows]
    for action in ("alerts.put", "alerts.rotate_secret", "alerts.test"):
        assert action in actions, actions
    put_row = next(r for r in rows if r["action"] == "alerts.put")
    assert put_row["after"]["threshold_pv"] == 100
    text = str(rows)
    for secret in (put["channels"][0]["signing_secret"], rotated["signing_secret"], KEY):
        assert secret not in text


async def test_a_threshold_above_the_balance_alerts_now_and_a_gift_recovers(
    alerts_admin: AdminServer, receiver: Receiver
):
    available = (await alerts_admin.balance(ENT_A))["available"]
    put = expect(
        await alerts_admin.ops("PUT", ALERTS, body(hook(receiver.hook), threshold=available + 1)),
        200,
    )
    receiver.secrets.append(put["channels"][0]["signing_secret"])
    [low] = await events(alerts_admin)
    assert (low["kind"], low["data"]["available_pv"]) == ("low_balance", available)
    assert low["data"]["threshold_pv"] == available + 1
    [got] = await receiver.wait_for(1)  # maybe before this test knew the secret: check now
    assert got.event_id == low["id"]
    assert receiver.verify(got.headers, got.body) == tuple(receiver.secrets)
    gift = {"pv": 5, "reason": "top-up"}
    expect(await alerts_admin.ops("POST", f"/v1/enterprises/{ENT_A}/gifts", gift), 201)
    found = await events(alerts_admin)
    assert [e["kind"] for e in found] == ["recovered", "low_balance"]  # newest first
    await receiver.wait_for(2)
    delivered = await until(
        lambda: _sent(alerts_admin, 2),
    )
    assert delivered


async def _sent(server: AdminServer, n: int) -> bool:
    found = await events(server)
    statuses = [d["status"] for e in found for d in e["deliveries"]]
    return statuses == ["sent"] * n


async def test_history_filters_and_shows_every_attempt(
    alerts_admin: AdminServer, receiver: Receiver
):
    receiver.script.extend([Answer(500, b"oops"), Answer(200, b"fine")])
    put = expect(await alerts_admin.ops("PUT", ALERTS, body(hook(receiver.hook), threshold=0)), 200)
    channel = put["channels"][0]["id"]
    first = expect(await alerts_admin.ops("POST", f"{ALERTS}/test", {"channel_id": channel}), 200)
    assert (first["outcome"], first["status_code"], first["response"]) == ("retry", 500, "oops")
    second = expect(await alerts_admin.ops("POST", f"{ALERTS}/test", {"channel_id": channel}), 200)
    assert (second["outcome"], second["status_code"]) == ("sent", 200)
    [newest, oldest] = await events(alerts_admin, kind="test")
    assert (newest["id"], oldest["id"]) == (second["event_id"], first["event_id"])
    [delivery] = oldest["deliveries"]
    assert (delivery["channel_id"], delivery["status"]) == (channel, "pending")
    [attempt] = delivery["attempts"]
    assert (attempt["number"], attempt["outcome"], attempt["status_code"]) == (1, "retry", 500)
    assert attempt["response"] == "oops"
    assert attempt["duration_ms"] >= 0
    assert await events(alerts_admin, kind="low_balance") == []
    assert await events(alerts_admin, kind="test", until="2000-01-01T00:00:00Z") == []
    since = newest["occurred_at"]
    assert [e["id"] for e in await events(alerts_admin, kind="test", since=since)] == [newest["id"]]
    bad = await alerts_admin.ops("GET", f"{ALERTS}/events", params={"kind": "Bad-Kind"})
    expect(bad, 400, "invalid_request")


async def test_rotation_overlap_both_secrets_verify(alerts_admin: AdminServer, receiver: Receiver):
    put = expect(await alerts_admin.ops("PUT", ALERTS, body(hook(receiver.hook), threshold=0)), 200)
    channel = put["channels"][0]["id"]
    old = put["channels"][0]["signing_secret"]
    rotated = expect(
        await alerts_admin.ops("POST", f"{ALERTS}/secret", {"channel_id": channel}), 200
    )
    new = rotated["signing_secret"]
    assert new != old
    assert rotated["channel_id"] == channel
    receiver.secrets[:] = [old, new]
    expect(await alerts_admin.ops("POST", f"{ALERTS}/test", {"channel_id": channel}), 200)
    assert set(receiver.received[-1].verified_by) == {old, new}
    shown = expect(await alerts_admin.ops("GET", ALERTS), 200)["channels"][0]
    assert shown["signing_secret"] == "whsec_****" + new[-4:]
    assert shown["previous_secret_until"] == rotated["previous_secret_until"]
    robot_put = expect(await alerts_admin.ops("PUT", ALERTS, body(robot(), threshold=0)), 200)
    not_webhook = {"channel_id": robot_put["channels"][0]["id"]}
    expect(await alerts_admin.ops("POST", f"{ALERTS}/secret", not_webhook), 400, "invalid_request")


async def test_a_failed_delivery_is_visible_and_ops_retry_it(make_admin: AdminFactory):
    settings = BillingSettings(
        alerts=AlertsSection(
            allow_http=True,
            allow_addresses=("127.0.0.1",),
            retry_schedule_s=(0.0, 0.05),
            retry_jitter=0.0,
            poll_interval_s=0.05,
        )
    )
    server = await make_admin(settings)
    receiver = Receiver()  # nothing listens yet: connection refused
    put = expect(await server.ops("PUT", ALERTS, body(hook(receiver.hook), threshold=0)), 200)
    channel = put["channels"][0]["id"]
    test = expect(await server.ops("POST", f"{ALERTS}/test", {"channel_id": channel}), 200)
    assert test["outcome"] == "retry"

    async def failed() -> Any:
        [event] = await events(server, kind="test")
        delivery = event["deliveries"][0]
        return delivery if delivery["status"] == "failed" else None

    delivery = await until(failed)
    assert [a["outcome"] for a in delivery["attempts"]] == ["retry", "retry"]
    assert "cannot connect" in delivery["last_error"]
    await receiver.start()
    try:
        retried = expect(
            await server.ops("POST", f"/v1/alerts/deliveries/{test['delivery_id']}/retry"), 200
        )
        assert retried["status"] == "pending"
        await receiver.wait_for(1)

        async def sent() -> Any:
            [event] = await events(server, kind="test")
            return event["deliveries"][0]["status"] == "sent"

        await until(sent)
        again = await server.ops("POST", f"/v1/alerts/deliveries/{test['delivery_id']}/retry")
        expect(again, 409, "conflict")
        assert any(r["action"] == "alerts.retry" for r in await server.audit(ENT_A))
    finally:
        await receiver.stop()


async def test_payments_adjustments_and_refunds_evaluate_at_once(alerts_admin: AdminServer):
    available = (await alerts_admin.balance(ENT_A))["available"]
    threshold = available + 10
    expect(await alerts_admin.ops("PUT", ALERTS, body(threshold=threshold)), 200)
    assert [e["kind"] for e in await events(alerts_admin)] == ["low_balance"]

    order = await alerts_admin.order(ENT_A)  # paid: 1,000,000 PV more
    assert [e["kind"] for e in await events(alerts_admin)] == ["recovered", "low_balance"]
    refund = {"order_id": order["id"], "package_ids": [p["id"] for p in order["packages"]]}
    expect(await alerts_admin.ops("POST", "/v1/refunds", refund), 201)
    kinds = [e["kind"] for e in await events(alerts_admin)]
    assert kinds == ["low_balance", "recovered", "low_balance"]

    gift = alerts_admin.seed.gift_a["id"] if alerts_admin.seed else ""
    adjust = {"bucket_id": gift, "delta_pv": 10, "reason": "correction"}
    expect(await alerts_admin.ops("POST", f"/v1/enterprises/{ENT_A}/adjustments", adjust), 201)
    latest = (await events(alerts_admin))[0]
    assert (latest["kind"], latest["data"]["available_pv"]) == ("recovered", threshold)
