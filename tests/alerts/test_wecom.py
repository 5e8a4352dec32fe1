"""WeCom group robots and app messages against a local WeCom (docs/rules.md §4).

The robot: errcode 45009 then 0 is one message sent; 93000 fails at once with WeCom's
message kept; 25 alerts within a minute to one robot are 20 sent and 5 a minute later —
also when two workers share the robot.  The app: one access token for many messages, a
refused token refreshed once.  The clock is moved, never slept on.
"""

from __future__ import annotations

import asyncio
import uuid

from billing.alerts.kinds import SETTINGS, USAGE
from billing.alerts.outbox import event_payload, insert_event, new_event_id
from billing.alerts.rows import EventRow
from tests.alerts.conftest import RigFactory
from tests.alerts.rig import ENT, Clock, Rig, alert_settings, app, robot
from tests.alerts.servers import WeCom

KEY = str(uuid.uuid4())


def wecom_rig(make_rig: RigFactory, wecom: WeCom, **settings: object) -> Rig:
    return make_rig(alert_settings(wecom_base=wecom.url, **settings))


async def low_balance(rig: Rig, *channels: object) -> None:
    await rig.enterprise()
    await rig.credit(150)
    await rig.configure(*channels, threshold=100)  # type: ignore[arg-type]
    await rig.evaluate(SETTINGS)
    await rig.spend(51)
    assert [e.kind for e in await rig.evaluate(USAGE)] == ["low_balance"]


async def test_robot_rate_limited_then_sent_once(make_rig: RigFactory, wecom: WeCom, clock: Clock):
    rig = wecom_rig(make_rig, wecom)
    wecom.robot_script.append({"errcode": 45009, "errmsg": "api freq out of limit"})
    await low_balance(rig, robot(KEY))
    assert await rig.deliver() == 1
    [delivery] = await rig.deliveries()
    assert delivery.status == "pending"
    clock.advance(seconds=59)  # 45009 waits at least a minute, not the schedule's 5 s
    assert await rig.deliver() == 0
    clock.advance(seconds=1)
    assert await rig.deliver() == 1
    [delivery] = await rig.deliveries()
    assert (delivery.status, delivery.attempts) == ("sent", 2)
    assert [k for k, _ in wecom.robot_messages] == [KEY, KEY]
    body = wecom.robot_messages[-1][1]
    assert body["msgtype"] == "markdown"
    content = body["markdown"]["content"]
    assert "余额不足" in content
    assert "Low balance" in content
    assert "99" in content
    assert len(content.encode()) <= 4096


async def test_robot_invalid_key_fails_at_once_with_wecoms_message(
    make_rig: RigFactory, wecom: WeCom, clock: Clock
):
    rig = wecom_rig(make_rig, wecom)
    wecom.robot_script.append({"errcode": 93000, "errmsg": "invalid webhook url, hint: xyz"})
    await low_balance(rig, robot(KEY))
    assert await rig.deliver() == 1
    clock.advance(days=1)
    assert await rig.deliver() == 0
    [delivery] = await rig.deliveries()
    assert delivery.status == "failed"
    assert "93000" in delivery.last_error
    assert "invalid webhook url" in delivery.last_error
    [attempt] = await rig.attempts(delivery.id)
    assert attempt.outcome == "failed"
    assert "invalid webhook url" in attempt.response


async def queue_test_messages(rig: Rig, n: int) -> None:
    """n events for the enterprise's one channel, due now."""
    async with rig.db.engine.connect() as conn:
        from billing.alerts import config

        _settings, [channel] = await config.read(conn, ENT)
    async with rig.db.begin() as conn:
        for _ in range(n):
            event_id = new_event_id()
            data = {"enterprise_id": ENT, "subject": ""}
            event = EventRow(
                id=event_id,
                enterprise_id=ENT,
                kind="test",
                subject="",
                payload=event_payload(event_id, "test", rig.clock(), data),
                occurred_at=rig.clock(),
                created_at=rig.clock(),
            )
            await insert_event(conn, event, [channel], rig.clock())


async def test_25_alerts_in_a_minute_to_one_robot_are_20_now_and_5_later(
    make_rig: RigFactory, wecom: WeCom, clock: Clock
):
    # Two billing processes taking 12 at a time: the second one's claim counts the first's.
    settings = alert_settings(wecom_base=wecom.url, concurrency=12)
    one, other = make_rig(settings), make_rig(settings, owner="worker-2")
    await one.enterprise()
    await one.configure(robot(KEY), threshold=0)
    await queue_test_messages(one, 25)
    assert await one.alerts.worker.run_once() == 12
    assert await other.alerts.worker.run_once() == 8  # 12 + 8: the robot's minute is full
    await asyncio.gather(one.deliver(), other.deliver())
    assert len(wecom.robot_messages) == 20
    statuses = sorted(d.status for d in await one.deliveries())
    assert statuses == ["pending"] * 5 + ["sent"] * 20
    clock.advance(seconds=59)
    assert await one.deliver() + await other.deliver() == 0
    clock.advance(seconds=1)
    assert await one.deliver() == 5
    assert len(wecom.robot_messages) == 25
    assert {d.status for d in await one.deliveries()} == {"sent"}


async def test_app_one_token_for_many_messages(make_rig: RigFactory, wecom: WeCom):
    rig = wecom_rig(make_rig, wecom)
    await rig.enterprise()
    await rig.configure(app("wwcorp1", "app-secret-1", ["alice", "bob"]), threshold=0)
    await queue_test_messages(rig, 6)
    assert await rig.deliver() == 6  # six at once, concurrently
    assert wecom.token_requests == [("wwcorp1", "app-secret-1")]
    assert {token for token, _ in wecom.app_messages} == {"token-1"}
    body = wecom.app_messages[0][1]
    assert (body["touser"], body["agentid"], body["msgtype"]) == ("alice|bob", 1000002, "markdown")
    assert "测试消息" in body["markdown"]["content"]
    assert {d.status for d in await rig.deliveries()} == {"sent"}


async def test_app_expired_token_is_refreshed_once_and_the_message_sent(
    make_rig: RigFactory, wecom: WeCom
):
    rig = wecom_rig(make_rig, wecom)
    await rig.enterprise()
    await rig.configure(app("wwcorp1", "app-secret-1", ["alice"]), threshold=0)
    await queue_test_messages(rig, 1)
    assert await rig.deliver() == 1
    wecom.valid_tokens.clear()  # WeCom expired token-1 early: 42001
    await queue_test_messages(rig, 1)
    assert await rig.deliver() == 1
    assert [t for t, _ in wecom.app_messages] == ["token-1", "token-1", "token-2"]
    assert len(wecom.token_requests) == 2
    deliveries = await rig.deliveries()
    assert [(d.status, d.attempts) for d in deliveries] == [("sent", 1), ("sent", 1)]


async def test_app_invalid_users_are_recorded(make_rig: RigFactory, wecom: WeCom):
    rig = wecom_rig(make_rig, wecom)
    await rig.enterprise()
    await rig.configure(app("wwcorp1", "s3cret", ["alice", "ghost"]), threshold=0)
    wecom.app_script.append({"errcode": 0, "invaliduser": "ghost"})
    await queue_test_messages(rig, 1)
    assert await rig.deliver() == 1
    [delivery] = await rig.deliveries()
    assert delivery.status == "sent"
    assert "invaliduser: ghost" in delivery.last_error
    [attempt] = await rig.attempts(delivery.id)
    assert attempt.outcome == "sent"
    assert "invaliduser: ghost" in attempt.error


async def test_app_wrong_secret_fails(make_rig: RigFactory, wecom: WeCom, clock: Clock):
    rig = wecom_rig(make_rig, wecom)
    await rig.enterprise()
    await rig.configure(app("wwcorp1", "bad", ["alice"]), threshold=0)
    wecom.gettoken_reply = {"errcode": 40001, "errmsg": "invalid credential"}
    await queue_test_messages(rig, 1)
    assert await rig.deliver() == 1
    [delivery] = await rig.deliveries()
    assert delivery.status == "failed"
    assert "40001" in delivery.last_error
    assert wecom.app_messages == []
