"""Webhook deliveries (docs/rules.md §4): Standard Webhooks signatures checked by the
receiver with ``standardwebhooks.Webhook.verify``, retries on the back-off schedule,
``Retry-After``, ``410 Gone``, a receiver that never comes back, one that hangs.

The receiver is a real HTTP server on loopback; the clock is moved, never slept on.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from billing.alerts import config, history
from billing.alerts.channels.webhook import WebhookChannel
from billing.alerts.kinds import SETTINGS, USAGE
from tests.alerts.conftest import RigFactory
from tests.alerts.rig import AUDIT, ENT, Clock, Rig, alert_settings, webhook
from tests.alerts.servers import Answer, Receiver


async def crossing(rig: Rig, receiver: Receiver) -> str:
    """ENT at 150 with a webhook to ``receiver`` and threshold 100, then 99: the event id."""
    await rig.enterprise()
    await rig.credit(150)
    saved = await rig.configure(webhook(receiver.hook), threshold=100)
    receiver.secrets += list(saved.new_secrets.values())
    await rig.evaluate(SETTINGS)
    await rig.spend(51)
    [event] = await rig.evaluate(USAGE)
    return event.id


async def test_the_receiver_verifies_and_refuses_a_tampered_body(rig: Rig, receiver: Receiver):
    event_id = await crossing(rig, receiver)
    assert await rig.deliver() == 1
    [got] = receiver.received
    assert got.event_id == event_id
    assert got.verified_by == tuple(receiver.secrets)
    assert got.payload["id"] == event_id
    assert got.headers["Content-Type"] == "application/json"
    secret = receiver.secrets[0]
    assert Webhook(secret).verify(got.body, got.headers)["data"]["available_pv"] == 99
    tampered = got.body.replace(b'"available_pv":99', b'"available_pv":9999')
    assert tampered != got.body
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(secret).verify(tampered, got.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "A" * 43).verify(got.body, got.headers)


async def test_an_old_timestamp_is_refused_by_the_receiver(rig: Rig, receiver: Receiver):
    await crossing(rig, receiver)
    late = datetime.now(UTC) - timedelta(minutes=10)
    channel = rig.alerts.worker.channels["webhook"]
    assert isinstance(channel, WebhookChannel)
    channel.wall = lambda: late  # a sender whose clock is 10 minutes behind
    await rig.deliver()
    [got] = receiver.received
    assert got.verified_by == ()  # verify() refused it: "Message timestamp too old"
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(receiver.secrets[0]).verify(got.body, got.headers)


async def test_both_secrets_sign_during_a_rotation_overlap(
    rig: Rig, receiver: Receiver, clock: Clock
):
    await rig.enterprise()
    saved = await rig.configure(webhook(receiver.hook), threshold=100)
    channel_id = saved.channels[0].id
    old = saved.new_secrets[channel_id]
    rotated, new = await config.rotate_secret(
        rig.db, AUDIT, ENT, channel_id, now=clock(), overlap=timedelta(hours=1)
    )
    assert new != old
    assert new.startswith("whsec_")
    assert rotated.previous_secret_until == clock() + timedelta(hours=1)
    receiver.secrets[:] = [old, new]
    await rig.alerts.send_test(ENT, channel_id)
    overlap = receiver.received[-1]
    assert set(overlap.verified_by) == {old, new}  # either secret verifies
    assert len(overlap.headers["webhook-signature"].split(" ")) == 2

    clock.advance(hours=1, seconds=1)
    await rig.alerts.send_test(ENT, channel_id)
    after = receiver.received[-1]
    assert after.verified_by == (new,)
    assert len(after.headers["webhook-signature"].split(" ")) == 1


async def test_500_500_200_is_delivered_once_after_three_attempts(
    rig: Rig, receiver: Receiver, clock: Clock
):
    receiver.script.extend([Answer(500), Answer(500), Answer(200)])
    event_id = await crossing(rig, receiver)
    assert await rig.deliver() == 1  # now: 500
    clock.advance(seconds=4.9)
    assert await rig.deliver() == 0  # the second attempt is 5 s after the first
    clock.advance(seconds=0.1)
    assert await rig.deliver() == 1  # 500 again
    clock.advance(seconds=299)
    assert await rig.deliver() == 0
    clock.advance(seconds=1)
    assert await rig.deliver() == 1  # 200
    clock.advance(days=1)
    assert await rig.deliver() == 0
    assert [r.event_id for r in receiver.received] == [event_id] * 3
    [delivery] = await rig.deliveries()
    assert (delivery.status, delivery.attempts) == ("sent", 3)
    attempts = await rig.attempts(delivery.id)
    assert [(a.number, a.outcome, a.status_code) for a in attempts] == [
        (1, "retry", 500),
        (2, "retry", 500),
        (3, "sent", 200),
    ]
    assert all(a.duration_ms is not None and a.duration_ms >= 0 for a in attempts)
    assert attempts[1].started_at - attempts[0].started_at == timedelta(seconds=5)


async def test_retry_after_is_honoured(rig: Rig, receiver: Receiver, clock: Clock):
    receiver.script.append(Answer(503, b"busy", {"Retry-After": "120"}))
    await crossing(rig, receiver)
    start = clock()
    assert await rig.deliver() == 1
    [delivery] = await rig.deliveries()
    assert delivery.next_attempt_at == start + timedelta(seconds=120)  # not the schedule's 5 s
    clock.advance(seconds=119)
    assert await rig.deliver() == 0
    clock.advance(seconds=1)
    assert await rig.deliver() == 1
    assert (await rig.deliveries())[0].status == "sent"
    first = (await rig.attempts(delivery.id))[0]
    assert (first.outcome, first.status_code, first.response) == ("retry", 503, "busy")


async def test_410_disables_the_channel_and_says_why(rig: Rig, receiver: Receiver, clock: Clock):
    receiver.script.append(Answer(410, b"gone for good"))
    await crossing(rig, receiver)
    assert await rig.deliver() == 1
    [delivery] = await rig.deliveries()
    assert delivery.status == "disabled"
    async with rig.db.engine.connect() as conn:
        _settings, [channel] = await config.read(conn, ENT)
    assert channel.enabled is False
    assert "410 Gone" in channel.disabled_reason
    clock.advance(days=1)
    assert await rig.deliver() == 0
    await rig.spend(99)  # exhausted: an event, but no delivery to a disabled channel
    assert [e.kind for e in await rig.evaluate(USAGE)] == ["exhausted"]
    assert len(await rig.deliveries()) == 1
    assert len(receiver.received) == 1


async def test_a_receiver_down_for_the_whole_schedule_fails_and_shows_it(
    rig: Rig, receiver: Receiver, clock: Clock
):
    await crossing(rig, receiver)
    await receiver.stop()  # connection refused from now on
    schedule = rig.settings.alerts.retry_schedule_s
    for delay in schedule:
        clock.advance(seconds=delay)
        assert await rig.deliver() == 1
    clock.advance(days=2)
    assert await rig.deliver() == 0
    [delivery] = await rig.deliveries()
    assert (delivery.status, delivery.attempts) == ("failed", len(schedule))
    assert "cannot connect" in delivery.last_error
    async with rig.db.engine.connect() as conn:
        [shown] = await history.events(conn, ENT)
    [(shown_delivery)] = shown.deliveries
    assert shown_delivery.delivery.status == "failed"
    assert [a.outcome for a in shown_delivery.attempts] == ["retry"] * len(schedule)


async def test_a_hanging_receiver_delays_no_other_channel(make_rig: RigFactory, receiver: Receiver):
    rig = make_rig(alert_settings(timeout_s=1.0, concurrency=8))
    hung = Receiver()
    await hung.start()
    hung.hold = asyncio.Event()  # answers nothing until the test ends
    try:
        await rig.enterprise()
        await rig.credit(150)
        saved = await rig.configure(webhook(hung.hook), webhook(receiver.hook), threshold=100)
        receiver.secrets += list(saved.new_secrets.values())
        await rig.evaluate(SETTINGS)
        await rig.spend(51)
        await rig.evaluate(USAGE)
        worker = rig.alerts.worker
        assert await worker.run_once() == 2
        await receiver.wait_for(1, within=0.5)  # while the other is still hanging
        await worker.drain()
        by_channel = {d.channel_id: d for d in await rig.deliveries()}
        good = by_channel[saved.channels[1].id]
        bad = by_channel[saved.channels[0].id]
        assert good.status == "sent"
        assert (bad.status, bad.schedule_pos) == ("pending", 1)
        assert "no answer" in (await rig.attempts(bad.id))[0].error
    finally:
        hung.hold.set()
        await hung.stop()
