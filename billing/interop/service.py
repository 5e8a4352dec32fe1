"""Interop in the billing process: its runtime, the WeCom callback routes, the expiry job.

`billing.service.build_app` calls `install_interop` on the admin app, after the alerts are
on it: accepted WeCom events are relayed through the alerts' outbox (`billing.wecom.relay`)
and account changes are evaluated by the interop alert kinds (`billing.interop.alerts`).
The admin routes of interop and WeCom settings are in `billing.api.routes.business_api`.
"""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.api.services import ALERTS
from billing.db import Database
from billing.interop import alerts as interop_alerts
from billing.interop import jobs
from billing.interop.accounts import InteropPolicy
from billing.interop.records import WeComEventRow, WeComSettingsRow
from billing.interop.runtime import INTEROP, InteropRuntime
from billing.settings import BillingSettings
from billing.wecom import callback, relay
from billing.wecom.messages import Event


def install_interop(app: web.Application, settings: BillingSettings, db: Database) -> None:
    """The runtime under `INTEROP`, the callback routes, the expiry job in ``cleanup_ctx``."""
    policy = InteropPolicy(trial_accounts=settings.interop.trial_accounts, tz=settings.timezone)
    interop_alerts.configure(policy)
    runtime = InteropRuntime(section=settings.interop, policy=policy)
    alerts = app.get(ALERTS)
    if alerts is not None:

        async def queue(
            conn: AsyncConnection, row: WeComEventRow, event: Event, wecom: WeComSettingsRow
        ) -> None:
            await relay.queue_relay(conn, row, event, wecom, now=alerts.clock())

        runtime.relay = queue
        runtime.relayed = alerts.worker.wake
        runtime.changed = alerts.changed
    app[INTEROP] = runtime
    callback.install(app)
    app.cleanup_ctx.append(jobs.background(db, runtime))
