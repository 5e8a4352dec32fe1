"""The billing service's settings, built by `metering.config` (TOML + ``PVGATE_*``)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from billing.interop.settings import InteropSection
from billing.outbound import parse_networks
from billing.rules.calendar import business_zone
from metering.config import build, load_file
from metering.connection import RedisSettings


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerSection:
    name: str = ""  # this consumer's name in the group; "" = host name and pid
    count: int = 100
    claim_idle_ms: int = 30_000
    max_deliveries: int = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class ReconcileSection:
    interval_s: float = 300.0
    settle_s: float = 5.0
    expiry_grace_s: float = 600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RetentionSection:
    """What billing trims and purges, every ``interval_s`` (billing/retention.py)."""

    interval_s: float = 60.0
    dead_letters_max: int = 100_000  # newest dead letters kept (about: XTRIM MAXLEN ~)
    idempotency_hours: float = 24.0  # stored responses to Idempotency-Key requests
    usage_batches_days: float = 7.0  # the consumer's record of the entries it booked
    wecom_events_days: float = 30.0  # WeCom events, their keys, the relay's outbox

    def __post_init__(self) -> None:
        checks = (
            ("interval_s", 1 <= self.interval_s <= 86_400, "1 to 86400 seconds"),
            ("dead_letters_max", 1_000 <= self.dead_letters_max <= 10**8, "1000 to 10^8"),
            ("idempotency_hours", 1 <= self.idempotency_hours <= 24 * 365, "1 to 8760 hours"),
            ("usage_batches_days", 1 <= self.usage_batches_days <= 3650, "1 to 3650 days"),
            ("wecom_events_days", 2 <= self.wecom_events_days <= 3650, "2 to 3650 days"),
        )
        for key, ok, expected in checks:
            if not ok:
                raise ValueError(f"{key}: expected {expected}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ReviewSection:
    # A page whose origin HTML holds one of these words is rejected by the reviewer.
    deny_words: tuple[str, ...] = ()
    fetch_timeout_s: float = 5.0
    # Origins are fetched only at public addresses, or at these (addresses or networks).
    allow_addresses: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_networks("allow_addresses", self.allow_addresses)


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertsSection:
    """Alert delivery (docs/architecture.md §5, Alerts); every value checked at start-up."""

    wecom_base: str = "https://qyapi.weixin.qq.com"  # WeCom's API; tests point it at loopback
    allow_http: bool = False  # webhook URLs may be plain http
    # Outbound calls reach only public addresses, or these (addresses or networks).
    allow_addresses: tuple[str, ...] = ()
    # Delay before each attempt (the first: 0, at once); after the last, the delivery fails.
    retry_schedule_s: tuple[float, ...] = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0)
    retry_jitter: float = 0.2  # each delay is spread by up to ± this fraction
    rotation_overlap_s: float = 86_400.0  # both webhook secrets sign for this long
    concurrency: int = 32  # deliveries in flight per billing process
    poll_interval_s: float = 1.0  # how often the worker looks for due deliveries
    lease_s: float = 60.0  # a claimed delivery is another worker's after this
    timeout_s: float = 10.0  # per outbound call
    robot_per_minute: int = 20  # WeCom's limit per group robot
    scheduler_interval_s: float = 60.0  # the longest the scheduler sleeps
    attempts_retention_days: float = 30.0  # attempts of finished deliveries are purged after

    def __post_init__(self) -> None:
        _check_alerts(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class BillingSettings:
    listen: str = "0.0.0.0:8081"
    metrics_listen: str = "127.0.0.1:9101"
    database_url: str = "sqlite:///pvgate-ledger.db"
    timezone: str = "Asia/Shanghai"
    interop_pricing: Literal["graduated", "volume"] = "graduated"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    redis: RedisSettings = field(default_factory=RedisSettings)
    consumer: ConsumerSection = field(default_factory=ConsumerSection)
    reconcile: ReconcileSection = field(default_factory=ReconcileSection)
    retention: RetentionSection = field(default_factory=RetentionSection)
    review: ReviewSection = field(default_factory=ReviewSection)
    alerts: AlertsSection = field(default_factory=AlertsSection)
    interop: InteropSection = field(default_factory=InteropSection)

    def __post_init__(self) -> None:
        business_zone(self.timezone)  # an unknown zone fails here, naming it


def _check_networks(key: str, values: tuple[str, ...]) -> None:
    try:
        parse_networks(values)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None


def _check_alerts(section: AlertsSection) -> None:
    """A ValueError naming the first ``[alerts]`` key whose value cannot work."""
    schedule = section.retry_schedule_s
    checks = (
        (
            "wecom_base",
            re.fullmatch(r"https?://[^/?#\s]+", section.wecom_base) is not None,
            "an http(s) URL without a path, e.g. https://qyapi.weixin.qq.com",
        ),
        (
            "retry_schedule_s",
            1 <= len(schedule) <= 20 and all(0 <= d <= 604_800 for d in schedule),
            "1 to 20 delays, each 0 to 604800 seconds",
        ),
        ("retry_jitter", 0 <= section.retry_jitter < 1, "a fraction from 0 up to (not) 1"),
        ("rotation_overlap_s", 0 <= section.rotation_overlap_s <= 30 * 86_400, "0 to 30 days"),
        ("concurrency", 1 <= section.concurrency <= 1000, "1 to 1000"),
        ("poll_interval_s", 0.01 <= section.poll_interval_s <= 60, "0.01 to 60 seconds"),
        (
            "lease_s",
            section.timeout_s * 4 < section.lease_s <= 3600,
            "more than 4 × timeout_s, at most 3600 seconds",
        ),
        ("timeout_s", 0.1 <= section.timeout_s <= 60, "0.1 to 60 seconds"),
        ("robot_per_minute", 1 <= section.robot_per_minute <= 1000, "1 to 1000"),
        ("scheduler_interval_s", 0.1 <= section.scheduler_interval_s <= 3600, "0.1 to 3600 s"),
        ("attempts_retention_days", 1 <= section.attempts_retention_days <= 3650, "1 to 3650"),
    )
    for key, ok, expected in checks:
        if not ok:
            raise ValueError(f"{key}: expected {expected}")
    _check_networks("allow_addresses", section.allow_addresses)


def load_billing_settings(
    path: str | Path | None, env: Mapping[str, str] | None = None
) -> BillingSettings:
    data = load_file(path) if path else {}
    return build(BillingSettings, data, os.environ if env is None else env)
