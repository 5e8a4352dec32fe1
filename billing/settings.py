"""The billing service's settings, built by `metering.config` (TOML + ``PVGATE_*``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

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
class ReviewSection:
    # A page whose origin HTML holds one of these words is rejected by the reviewer.
    deny_words: tuple[str, ...] = ()
    fetch_timeout_s: float = 5.0


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
    review: ReviewSection = field(default_factory=ReviewSection)

    def __post_init__(self) -> None:
        business_zone(self.timezone)  # an unknown zone fails here, naming it


def load_billing_settings(
    path: str | Path | None, env: Mapping[str, str] | None = None
) -> BillingSettings:
    data = load_file(path) if path else {}
    return build(BillingSettings, data, os.environ if env is None else env)
