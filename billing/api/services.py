"""What the business routes share: the Redis store and settings, and the scope checks."""

from __future__ import annotations

from typing import Any

from billing.api.auth import fetch_visible_enterprise
from billing.api.context import RequestContext
from billing.errors import NotFound
from billing.ledger import OrderState, get_order
from billing.operations import id_from_key
from billing.settings import BillingSettings
from metering import BalanceStore
from metering.sites import SiteRegistry


def store(ctx: RequestContext) -> BalanceStore:
    return ctx.state("store", BalanceStore)


def settings(ctx: RequestContext) -> BillingSettings:
    return ctx.state("settings", BillingSettings)


def registry(ctx: RequestContext) -> SiteRegistry:
    return ctx.state("registry", SiteRegistry)


async def visible_enterprise(ctx: RequestContext, enterprise_id: str) -> dict[str, Any]:
    """The enterprise, or 404 when it does not exist or lies outside the token's scope."""
    async with ctx.db.engine.connect() as conn:
        row = await fetch_visible_enterprise(conn, ctx.principal, enterprise_id)
    return dict(row._mapping)


async def visible_order(ctx: RequestContext, order_id: str) -> OrderState:
    """The order, or 404 — also when its enterprise lies outside the token's scope."""
    async with ctx.db.engine.connect() as conn:
        try:
            state = await get_order(conn, order_id)
            await fetch_visible_enterprise(conn, ctx.principal, state.order["enterprise_id"])
        except NotFound:
            raise NotFound(f"order {order_id!r} not found") from None
    return state


def id_for_request(ctx: RequestContext, prefix: str) -> str | None:
    """The id of what this request creates, stable across its retries (same key), or None."""
    if ctx.idempotency_key is None:
        return None
    return id_from_key(prefix, ctx.principal.role, ctx.idempotency_key)
