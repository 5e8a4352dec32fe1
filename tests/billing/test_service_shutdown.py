"""Billing stops promptly and cleanly whatever its background jobs are doing."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from prometheus_client import REGISTRY

from billing.api.server import AdminRunner
from billing.audit import SystemAuditor
from billing.db import Database
from billing.service import build_app
from billing.settings import BillingSettings, ReconcileSection
from metering import BalanceStore
from metering.connection import RedisSettings
from pvgate.embedded import RedisServer
from tests.billing.support import ENT, enterprise, paid_order


def booked() -> float:
    return REGISTRY.get_sample_value("pvgate_billing_reconciliation_differences_total") or 0.0


async def test_a_stop_during_a_reconciliation_settle_wait_ends_within_seconds(
    db: Database, store: BalanceStore, redis_node: RedisServer, audit: SystemAuditor
):
    """A reconciliation waiting out its settle time (here a minute, so that the stop comes
    in the middle of it) is cancelled at the stop, books nothing, and raises nothing."""
    await enterprise(db, audit)
    await paid_order(db, store, audit)
    await store.debit(ENT, 5)  # in Redis, not in the ledger: the pass has work to settle
    settings = dataclasses.replace(
        BillingSettings(),
        database_url=db.url,
        redis=RedisSettings(url=redis_node.url),
        reconcile=ReconcileSection(interval_s=0.1, settle_s=60.0),
    )
    client = await settings.redis.open()
    runner = AdminRunner(build_app(settings, db, client), access_log=None)
    await runner.setup()
    booked_before = booked()
    await asyncio.sleep(1.0)  # the pass found the difference and is settling
    started = time.monotonic()
    await runner.cleanup()  # raised TimeoutError out of the cleanup before
    took = time.monotonic() - started
    await client.aclose()
    assert took < 10, f"stopping took {took:.1f} s"
    assert booked() == booked_before  # cancelled before booking
