"""Running billing: the admin API, the usage consumer and the periodic jobs, one process.

``pvgate billing`` serves the admin API (default port 8081) and Prometheus metrics (9101),
consumes ``pvgate:usage`` as one member of the consumer group, and every
``reconcile.interval_s`` reconciles the ledger with Redis and records expired buckets, and
every ``retention.interval_s`` trims and purges what would otherwise grow for ever.
Alerts (`billing.alerts.service.Alerts`) evaluate after each committed usage batch and
deliver beside the consumer.
It refuses to start on an out-of-date ledger schema (``pvgate migrate`` first).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from billing import reconcile, retention
from billing.alerts import REGISTRY as ALERT_KINDS
from billing.alerts.service import Alerts
from billing.api.app import create_admin_app
from billing.api.routes import business_api
from billing.api.server import AdminRunner
from billing.api.services import ALERTS, SETTINGS, SITE_REGISTRY, STORE
from billing.consumer import UsageConsumer
from billing.db import Database
from billing.interop.service import install_interop
from billing.settings import BillingSettings
from metering import BalanceStore
from metering.config import ConfigError
from metering.logs import configure_logging
from metering.scripts import RedisClient
from metering.sites import SiteRegistry

log = logging.getLogger("pvgate.billing")


def build_app(settings: BillingSettings, db: Database, client: RedisClient) -> web.Application:
    """The admin app with the consumer and jobs attached to its lifetime."""
    store = BalanceStore(client)
    app = create_admin_app(db, business_api())
    app[STORE] = store
    app[SETTINGS] = settings
    app[SITE_REGISTRY] = SiteRegistry(client)
    app[ALERTS] = alerts = Alerts.create(settings, db, store, ALERT_KINDS)
    app.cleanup_ctx.append(_background(settings, db, client, store, alerts))
    install_interop(app, settings, db)  # its runtime, the WeCom callback, the expiry job
    return app


def _background(
    settings: BillingSettings,
    db: Database,
    client: RedisClient,
    store: BalanceStore,
    alerts: Alerts,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def run(app: web.Application) -> AsyncIterator[None]:
        name = settings.consumer.name or f"{socket.gethostname()}-{os.getpid()}"
        consumer = UsageConsumer(
            db,
            client,
            name,
            count=settings.consumer.count,
            claim_idle_ms=settings.consumer.claim_idle_ms,
            max_deliveries=settings.consumer.max_deliveries,
            on_batch=alerts.evaluator.touch,  # alerts: evaluated right after each commit
        )
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(consumer.run(stop), name="the usage consumer"),
            asyncio.create_task(_jobs(settings, db, store, consumer, stop), name="reconciliation"),
            asyncio.create_task(_retention(settings, db, client, stop), name="retention"),
            # the evaluator, the delivery worker and the scheduler
            asyncio.create_task(alerts.run(stop), name="alerts"),
        ]
        yield
        stop.set()
        await _finish(tasks, within=5.0)
        await alerts.close()

    return run


async def _finish(tasks: list[asyncio.Task[None]], within: float) -> None:
    """Let the tasks see ``stop`` and end; cancel what is still busy after ``within`` (a
    reconciliation in its settle wait, say): a transaction cancelled midway rolls back."""
    _, busy = await asyncio.wait(tasks, timeout=within)
    for task in busy:
        log.info("%s still busy %.0f s after the stop: cancelled", task.get_name(), within)
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _retention(
    settings: BillingSettings, db: Database, client: RedisClient, stop: asyncio.Event
) -> None:
    conf = settings.retention
    while not stop.is_set():
        try:
            await retention.sweep(
                db,
                client,
                dead_letters_max=conf.dead_letters_max,
                idempotency_hours=conf.idempotency_hours,
                usage_batches_days=conf.usage_batches_days,
                wecom_events_days=conf.wecom_events_days,
            )
        except Exception:  # retried at the next interval; nothing is lost by waiting
            log.exception("retention pass failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), conf.interval_s)


async def _jobs(
    settings: BillingSettings,
    db: Database,
    store: BalanceStore,
    consumer: UsageConsumer,
    stop: asyncio.Event,
) -> None:
    conf = settings.reconcile
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), conf.interval_s)
        if stop.is_set():
            return
        try:
            booked = await reconcile.reconcile(
                db, store, settle=conf.settle_s, drain=consumer.drain, settled=consumer.settled
            )
            expired = await reconcile.record_expirations(
                db, store, grace=timedelta(seconds=conf.expiry_grace_s)
            )
            if booked or expired:
                log.info(
                    "reconciliation booked %d differences, %d expirations", len(booked), expired
                )
        except Exception:  # a failed pass is retried at the next interval
            log.exception("reconciliation pass failed")


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def start_billing(
    settings: BillingSettings, db: Database, client: RedisClient
) -> list[web.AppRunner]:
    """The admin API and the metrics endpoint, listening; the runners to clean up."""
    await db.check_schema()  # raises SchemaOutdated naming the command to run
    metrics = web.Application()
    metrics.router.add_get("/metrics", _metrics)
    runners = [
        AdminRunner(build_app(settings, db, client), access_log=None),
        web.AppRunner(metrics, access_log=None),
    ]
    ready: list[web.AppRunner] = []
    for runner, address in zip(runners, (settings.listen, settings.metrics_listen), strict=True):
        await runner.setup()
        ready.append(runner)
        host, _, port = address.rpartition(":")
        try:
            await web.TCPSite(runner, host, int(port)).start()
        except OSError as exc:  # taken, or not an address of this machine
            for started in reversed(ready):
                await started.cleanup()
            raise ConfigError(f"listen address {address}: {exc.strerror or exc}") from exc
    log.info("billing on %s, metrics on %s", settings.listen, settings.metrics_listen)
    return runners


async def serve_billing(settings: BillingSettings) -> int:
    db = Database(settings.database_url)
    client = await settings.redis.open()
    try:
        runners = await start_billing(settings, db, client)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        for runner in runners:
            await runner.cleanup()
    finally:
        await client.aclose()
        await db.dispose()
    return 0


def run_billing(settings: BillingSettings) -> int:
    configure_logging(settings.log_level)
    return asyncio.run(serve_billing(settings))
