"""The alert metrics, by the exact names a dashboard uses (docs/architecture.md §7)."""

from __future__ import annotations

from prometheus_client import REGISTRY

from billing.alerts import deliveries
from billing.alerts.kinds import SETTINGS, USAGE
from tests.alerts.rig import Clock, Rig, webhook
from tests.alerts.servers import Answer, Receiver


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_attempts_latency_outbox_and_balances_are_counted(
    rig: Rig, receiver: Receiver, clock: Clock
):
    sent = value("pvgate_alerts_sent_total", channel="webhook", result="sent")
    retried = value("pvgate_alerts_sent_total", channel="webhook", result="retry")
    latencies = value("pvgate_alert_delivery_seconds_count")
    await rig.enterprise()
    await rig.enterprise("ent-quiet")  # no alert settings: no balance series
    await rig.credit(150)
    await rig.credit(7, enterprise_id="ent-quiet")
    await rig.configure(webhook(receiver.hook), threshold=100)
    await rig.evaluate(SETTINGS)
    assert value("pvgate_enterprise_available_pv", enterprise="ent-alerts") == 150
    await rig.spend(51)
    receiver.script.append(Answer(500))
    await rig.evaluate(USAGE)
    assert await rig.alerts.evaluator.evaluate(["ent-quiet"], cause=USAGE) == []
    assert value("pvgate_enterprise_available_pv", enterprise="ent-alerts") == 99
    assert (
        REGISTRY.get_sample_value("pvgate_enterprise_available_pv", {"enterprise": "ent-quiet"})
        is None
    )
    assert await deliveries.count_due(rig.db, clock()) == 1

    await rig.deliver()  # 500
    assert value("pvgate_alerts_sent_total", channel="webhook", result="retry") == retried + 1
    assert await deliveries.count_due(rig.db, clock()) == 0  # due again in 5 s
    clock.advance(seconds=5)
    await rig.alerts.worker._refresh_gauge()
    assert value("pvgate_alert_outbox_due") == 1
    await rig.deliver()  # 200
    assert value("pvgate_alerts_sent_total", channel="webhook", result="sent") == sent + 1
    assert value("pvgate_alert_delivery_seconds_count") == latencies + 1
    for channel in ("webhook", "wecom_robot", "wecom_app"):
        for result in ("sent", "retry", "failed", "disabled"):
            labels = {"channel": channel, "result": result}
            assert REGISTRY.get_sample_value("pvgate_alerts_sent_total", labels) is not None
