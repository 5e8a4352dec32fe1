"""Enterprises, their balance, gifts, adjustments and usage (docs/architecture.md §6)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import Field, StrictBool, StrictInt, model_validator

from billing import operations
from billing.alerts import kinds as alert_causes
from billing.api import services
from billing.api.context import RequestContext
from billing.api.framework import Api, ApiModel, BucketId, Id, QueryTime, Text, Timestamp
from billing.api.services import SETTINGS, STORE
from billing.errors import ValidationFailed
from billing.ledger import USAGE_SOURCES, UsageSource, usage_entries
from billing.rules.calendar import business_zone
from metering.buckets import from_ms

api = Api()


class EnterpriseIn(ApiModel):
    id: Id
    id_type: Literal["qidian", "wecom"]
    name: Text = Field(min_length=1, max_length=200)
    industry: Text = Field(min_length=1, max_length=64)
    verified: StrictBool = False
    partner_id: Id | None = None


class EnterpriseOut(ApiModel):
    id: str
    id_type: str
    name: str
    industry: str
    verified: bool
    partner_id: str | None
    flagged_abuse: bool
    flagged_violation: bool
    suspended: bool
    created_at: datetime
    updated_at: datetime


class EnterprisePatch(ApiModel):
    verified: StrictBool | None = None
    flagged_abuse: StrictBool | None = None
    flagged_violation: StrictBool | None = None
    suspended: StrictBool | None = None
    reason: Text = Field(min_length=1, max_length=500)

    @model_validator(mode="after")
    def _something(self) -> EnterprisePatch:
        if not self.changes():
            raise ValueError("nothing to change: give verified, flagged_* or suspended")
        return self

    def changes(self) -> dict[str, bool]:
        return {k: v for k, v in self.model_dump(exclude={"reason"}).items() if v is not None}


@api.route(
    "POST",
    "/v1/enterprises",
    summary="Register an enterprise",
    status=201,
    request_model=EnterpriseIn,
    response_model=EnterpriseOut,
    roles=("ops", "partner"),
    audit_action="enterprise.register",
)
async def register_enterprise(ctx: RequestContext, body: EnterpriseIn) -> EnterpriseOut:
    """ops register any enterprise; a partner registers its own (partner_id is itself)."""
    new = operations.NewEnterprise(**body.model_dump())
    if ctx.principal.kind == "partner":
        if new.partner_id not in (None, ctx.principal.subject_id):
            raise ValidationFailed("partner_id", "a partner registers its own enterprises")
        # Verification is ops' call.
        new = dataclasses.replace(new, partner_id=ctx.principal.subject_id, verified=False)
    row = await operations.register_enterprise(ctx.db, ctx.audit, new)
    return EnterpriseOut.model_validate(row, from_attributes=True)


@api.route(
    "GET",
    "/v1/enterprises/{enterprise_id}",
    summary="Read an enterprise",
    response_model=EnterpriseOut,
)
async def get_enterprise(ctx: RequestContext, body: None, enterprise_id: Id) -> EnterpriseOut:
    row = await services.visible_enterprise(ctx, enterprise_id)
    return EnterpriseOut.model_validate(row, from_attributes=True)


@api.route(
    "PATCH",
    "/v1/enterprises/{enterprise_id}",
    summary="Verify, flag or suspend",
    request_model=EnterprisePatch,
    response_model=EnterpriseOut,
    roles=("ops",),
    audit_action="enterprise.update",
)
async def patch_enterprise(
    ctx: RequestContext, body: EnterprisePatch, enterprise_id: Id
) -> EnterpriseOut:
    """Suspension blocks the enterprise's pages at once (through metering)."""
    await services.visible_enterprise(ctx, enterprise_id)
    row = await operations.update_enterprise(
        ctx.db, ctx.app[STORE], ctx.audit, enterprise_id, body.changes(), body.reason
    )
    return EnterpriseOut.model_validate(row, from_attributes=True)


class BucketOut(ApiModel):
    id: str
    kind: str
    status: str
    granted: int
    used: int
    remaining: int
    expires_at: datetime
    order_id: str | None


class BalanceOut(ApiModel):
    enterprise_id: str
    available: int
    blocked_reason: str | None
    suspended: bool
    buckets: list[BucketOut]


@api.route(
    "GET",
    "/v1/enterprises/{enterprise_id}/balance",
    summary="Balance and buckets",
    response_model=BalanceOut,
)
async def get_balance(ctx: RequestContext, body: None, enterprise_id: Id) -> BalanceOut:
    """Available PV (live buckets), why pages would be refused, every bucket."""
    await services.visible_enterprise(ctx, enterprise_id)
    snapshot = await ctx.app[STORE].snapshot(enterprise_id)
    return BalanceOut(
        enterprise_id=enterprise_id,
        available=snapshot.available,
        blocked_reason=snapshot.reason.value if snapshot.reason else None,
        suspended=snapshot.suspended,
        buckets=[
            BucketOut(
                id=b.id,
                kind=b.kind.value,
                status=b.status.value,
                granted=b.granted,
                used=b.used,
                remaining=b.remaining,
                expires_at=from_ms(b.expires_at),
                order_id=b.order_id or None,
            )
            for b in snapshot.buckets
        ],
    )


class GiftIn(ApiModel):
    pv: StrictInt = Field(ge=1, le=100_000_000)
    reason: Text = Field(min_length=1, max_length=500)
    order_id: Id | None = None
    expires_at: Timestamp | None = None


class GiftOut(ApiModel):
    id: str
    enterprise_id: str
    order_id: str | None
    granted_pv: int
    reason: str
    granted_at: datetime
    expires_at: datetime


@api.route(
    "POST",
    "/v1/enterprises/{enterprise_id}/gifts",
    summary="Grant gift PV",
    status=201,
    request_model=GiftIn,
    response_model=GiftOut,
    roles=("ops",),
    audit_action="gift.grant",
)
async def grant_gift(ctx: RequestContext, body: GiftIn, enterprise_id: Id) -> GiftOut:
    """Gift PV are used before purchased PV; a gift tied to an order is voided by its refund."""
    row = await operations.grant_gift(
        ctx.db,
        ctx.app[STORE],
        ctx.audit,
        enterprise_id,
        pv=body.pv,
        reason=body.reason,
        order_id=body.order_id,
        expires_at=body.expires_at,
        tz=ctx.app[SETTINGS].timezone,
        gift_id=services.id_for_request(ctx, "gift"),
    )
    await services.alerts_changed(ctx, enterprise_id, alert_causes.GIFT)
    return GiftOut.model_validate(row, from_attributes=True)


class AdjustmentIn(ApiModel):
    bucket_id: BucketId
    delta_pv: StrictInt = Field(ge=-1_000_000_000, le=1_000_000_000)
    reason: Text = Field(min_length=1, max_length=500)


class AdjustmentOut(ApiModel):
    id: str
    enterprise_id: str
    bucket_id: str
    delta_pv: int
    reason: str
    actor: str
    created_at: datetime


@api.route(
    "POST",
    "/v1/enterprises/{enterprise_id}/adjustments",
    summary="Correct a bucket's granted PV",
    status=201,
    request_model=AdjustmentIn,
    response_model=AdjustmentOut,
    roles=("ops",),
    audit_action="bucket.adjust",
)
async def adjust(ctx: RequestContext, body: AdjustmentIn, enterprise_id: Id) -> AdjustmentOut:
    if body.delta_pv == 0:
        raise ValidationFailed("delta_pv", "must not be 0")
    row = await operations.adjust_bucket(
        ctx.db,
        ctx.app[STORE],
        ctx.audit,
        enterprise_id,
        bucket_id=body.bucket_id,
        delta_pv=body.delta_pv,
        reason=body.reason,
        actor=ctx.principal.actor,
        adjustment_id=services.id_for_request(ctx, "adj"),
    )
    await services.alerts_changed(ctx, enterprise_id, alert_causes.ADJUSTMENT)
    return AdjustmentOut.model_validate(row, from_attributes=True)


class UsageQuery(ApiModel):
    granularity: Literal["hour", "day"] = "day"
    since: QueryTime | None = None
    until: QueryTime | None = None


class UsageRow(ApiModel):
    period: datetime
    bucket_id: str
    source: UsageSource = Field(
        description="stream: reported by the gateways; reconciliation: booked by a "
        "reconciliation pass (may be negative); recharge: gift PV a refund charged again"
    )
    pv: int


class UsageOut(ApiModel):
    enterprise_id: str
    granularity: str
    items: list[UsageRow]


@api.route(
    "GET",
    "/v1/enterprises/{enterprise_id}/usage",
    summary="Usage per period, bucket and source",
    query_model=UsageQuery,
    response_model=UsageOut,
)
async def get_usage(
    ctx: RequestContext, body: None, enterprise_id: Id, query: UsageQuery
) -> UsageOut:
    """PV used per hour (UTC) or per day (in the business timezone, 00:00 to 24:00 local
    time), bucket and source, as the ledger has it.

    One row per period, bucket and ``source``: ``stream`` is the usage the gateways
    reported; ``reconciliation`` what a reconciliation pass booked when Redis had counted
    PV the stream never delivered (a gateway killed before its flush; negative when the
    ledger was ahead); ``recharge`` the gift PV a refund charged again to a package.  A
    reconciliation or re-charge counts in the period of the moment it was booked.  Summed
    over periods and sources, a bucket's rows equal its ``used`` in the balance once
    reconciled.  Default window: the last 31 days.
    """
    await services.visible_enterprise(ctx, enterprise_id)
    until = query.until or datetime.now(UTC)
    since = query.since or max(until - timedelta(days=31), datetime(1970, 1, 1, tzinfo=UTC))
    if since >= until:
        raise ValidationFailed("since", "must be before until")
    async with ctx.db.engine.connect() as conn:
        entries = await usage_entries(conn, enterprise_id, since, until)
    zone = business_zone(ctx.app[SETTINGS].timezone)
    totals: dict[tuple[datetime, str, int], int] = {}
    for e in entries:
        # An hour counts in the local day it starts in (docs/architecture.md §5).
        period = (
            e.hour
            if query.granularity == "hour"
            else e.hour.astimezone(zone).replace(hour=0, minute=0, second=0, microsecond=0)
        )
        key = (period, e.bucket_id, USAGE_SOURCES.index(e.source))
        totals[key] = totals.get(key, 0) + e.pv
    return UsageOut(
        enterprise_id=enterprise_id,
        granularity=query.granularity,
        items=[
            UsageRow(period=p, bucket_id=b, source=USAGE_SOURCES[s], pv=n)
            for (p, b, s), n in sorted(totals.items())
        ],
    )
