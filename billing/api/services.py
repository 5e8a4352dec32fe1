"""What the business routes share: their typed app state and the scope checks.

`billing.service.build_app` sets `STORE`, `SETTINGS`, `SITE_REGISTRY` and `ALERTS` on the
admin app; handlers read them as ``ctx.app[STORE]``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from billing.alerts.service import Alerts
from billing.api.auth import fetch_visible_enterprise
from billing.api.context import RequestContext
from billing.errors import NotFound
from billing.ledger import OrderState, get_order
from billing.operations import id_from_key
from billing.rows import EnterpriseRow
from billing.settings import BillingSettings
from metering import BalanceStore
from metering.sites import SiteRegistry

STORE = web.AppKey("store", BalanceStore)
SETTINGS = web.AppKey("settings", BillingSettings)
SITE_REGISTRY = web.AppKey("site_registry", SiteRegistry)
ALERTS = web.AppKey("alerts", Alerts)


def now(ctx: RequestContext) -> datetime:
    """The time of alert bookkeeping: the alerts' clock (tests drive it), else UTC now."""
    alerts = ctx.app.get(ALERTS)
    return alerts.clock() if alerts is not None else datetime.now(UTC)


async def alerts_changed(ctx: RequestContext, enterprise_id: str, cause: str) -> None:
    """Evaluate the enterprise's alerts after a change of its balance or settings
    (docs/rules.md §4); a failure is logged, never the request's."""
    alerts = ctx.app.get(ALERTS)
    if alerts is not None:
        await alerts.changed(enterprise_id, cause)


def wake_alerts(ctx: RequestContext) -> None:
    alerts = ctx.app.get(ALERTS)
    if alerts is not None:
        alerts.worker.wake()


async def visible_enterprise(ctx: RequestContext, enterprise_id: str) -> EnterpriseRow:
    """The enterprise, or 404 when it does not exist or lies outside the token's scope."""
    async with ctx.db.engine.connect() as conn:
        return await fetch_visible_enterprise(conn, ctx.principal, enterprise_id)


async def visible_order(ctx: RequestContext, order_id: str) -> OrderState:
    """The order, or 404 — also when its enterprise lies outside the token's scope."""
    async with ctx.db.engine.connect() as conn:
        try:
            state = await get_order(conn, order_id)
            await fetch_visible_enterprise(conn, ctx.principal, state.order.enterprise_id)
        except NotFound:
            raise NotFound(f"order {order_id!r} not found") from None
    return state


def id_for_request(ctx: RequestContext, prefix: str) -> str | None:
    """The id of what this request creates, stable across its retries (same key), or None."""
    if ctx.idempotency_key is None:
        return None
    return id_from_key(prefix, ctx.principal.role, ctx.idempotency_key)
