"""The alert metrics (docs/architecture.md §7); a dashboard uses these exact names."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CHANNELS = ("webhook", "wecom_robot", "wecom_app")
RESULTS = ("sent", "retry", "failed", "disabled")

SENT = Counter(
    "pvgate_alerts_sent_total",
    "Alert delivery attempts, by channel type and result (sent, retry, failed, disabled).",
    ["channel", "result"],
)
DELIVERY_SECONDS = Histogram(
    "pvgate_alert_delivery_seconds",
    "From the observation of the crossing to its acceptance by the receiver.",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800, 7200, 36000, 86400),
)
OUTBOX_DUE = Gauge(
    "pvgate_alert_outbox_due",
    "Alert deliveries due and not sent yet.",
    multiprocess_mode="mostrecent",
)
AVAILABLE_PV = Gauge(
    "pvgate_enterprise_available_pv",
    "Available PV of each enterprise with alerts configured, at its last evaluation.",
    ["enterprise"],
    multiprocess_mode="mostrecent",
)

for _channel in CHANNELS:  # every series exists from the start, at 0
    for _result in RESULTS:
        SENT.labels(_channel, _result)
