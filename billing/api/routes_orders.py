"""Quotes, orders, payments, invoices and refunds (docs/rules.md §2, §6, §7)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import Field, StrictBool, StrictInt

from billing import operations, refunding
from billing.alerts import kinds as alert_causes
from billing.api import services
from billing.api.context import RequestContext
from billing.api.framework import Api, ApiModel, BucketId, Id, Text, Timestamp
from billing.api.services import SETTINGS, STORE
from billing.errors import ValidationFailed
from billing.interop.rules import INTEROP_SKU
from billing.ledger import OrderState
from billing.rules.pricing import get_sku, quote_interop, quote_packages
from billing.rules.refunds import RefundQuote

api = Api()


class QuoteIn(ApiModel):
    kind: Literal["pv", "interop"] | None = Field(default=None, description="default: by sku")
    sku: Text | None = Field(
        default=None, max_length=32, description="pv_1m, pv_3m, or wecom_interop"
    )
    quantity: StrictInt | None = Field(
        default=None, ge=1, le=10_000_000, description="packages (or, kind interop, accounts)"
    )
    accounts: StrictInt | None = Field(
        default=None, ge=1, le=10_000_000, description="interop accounts (sku wecom_interop)"
    )
    years: StrictInt = Field(default=1, ge=1, le=10, description="interop only")

    def interop_accounts(self) -> int | None:
        """The accounts of an interop quote, None for a PV one; 400 for a mixed-up one."""
        if self.kind != "interop" and self.sku != INTEROP_SKU:
            if self.accounts is not None:
                raise ValidationFailed("accounts", f"only for sku {INTEROP_SKU}")
            return None
        if self.kind == "pv" or self.sku not in (None, INTEROP_SKU):
            raise ValidationFailed("sku", f"an interop quote has sku {INTEROP_SKU}")
        given = {n for n in (self.accounts, self.quantity) if n is not None}
        if len(given) != 1:
            raise ValidationFailed("accounts", "give the number of accounts (once)")
        return given.pop()


class QuoteLineOut(ApiModel):
    item: str
    description: str
    quantity: int
    unit_price_fen: int
    amount_fen: int


class QuoteOut(ApiModel):
    kind: str
    quantity: int
    total_fen: int
    total_pv: int | None = None
    mode: str | None = None
    years: int | None = None
    lines: list[QuoteLineOut]


@api.route(
    "POST", "/v1/quotes", summary="Price a purchase", request_model=QuoteIn, response_model=QuoteOut
)
async def create_quote(ctx: RequestContext, body: QuoteIn) -> QuoteOut:
    """PV packages at 3 fen/PV, or interop accounts in the configured pricing mode."""
    accounts = body.interop_accounts()
    if accounts is None:
        if body.quantity is None:
            raise ValidationFailed("quantity", "field required")
        quote = quote_packages(body.sku or "", body.quantity)
        return QuoteOut(
            kind="pv",
            quantity=body.quantity,
            total_fen=quote.total_fen,
            total_pv=quote.total_pv,
            lines=[QuoteLineOut.model_validate(x, from_attributes=True) for x in quote.lines],
        )
    mode = ctx.app[SETTINGS].interop_pricing
    interop = quote_interop(accounts, body.years, mode)
    return QuoteOut(
        kind="interop",
        quantity=accounts,
        total_fen=interop.total_fen,
        mode=mode,
        years=body.years,
        lines=[QuoteLineOut.model_validate(x, from_attributes=True) for x in interop.lines],
    )


class OrderIn(ApiModel):
    enterprise_id: Id
    id_type: Literal["qidian", "wecom"]
    sku: Text = Field(min_length=1, max_length=32, description="pv_1m, pv_3m or wecom_interop")
    quantity: StrictInt | None = Field(default=None, ge=1, le=10_000, description="packages")
    accounts: StrictInt | None = Field(
        default=None, ge=1, le=10_000_000, description="interop accounts (sku wecom_interop)"
    )
    years: StrictInt | None = Field(default=None, ge=1, le=10, description="interop; default 1")
    agreement_accepted: StrictBool = Field(description="must be true (docs/rules.md §2)")
    voucher: Text | None = Field(default=None, max_length=64)

    def counts(self) -> tuple[int, int]:
        """(quantity — packages or accounts —, years); 400 for a field of the other kind."""
        if self.sku != INTEROP_SKU:
            get_sku(self.sku)
            for name in ("accounts", "years"):
                if getattr(self, name) is not None:
                    raise ValidationFailed(name, f"only for sku {INTEROP_SKU}")
            if self.quantity is None:
                raise ValidationFailed("quantity", "field required")
            return self.quantity, 1
        if self.quantity is not None:
            raise ValidationFailed("quantity", f"sku {INTEROP_SKU} takes accounts and years")
        if self.accounts is None:
            raise ValidationFailed("accounts", "field required")
        return self.accounts, self.years or 1


class LicenceOut(ApiModel):
    id: str
    accounts: int
    years: int
    valid_from: datetime
    valid_until: datetime


class PackageOut(ApiModel):
    id: str
    position: int
    granted_pv: int
    paid_cash_fen: int
    paid_at: datetime
    expires_at: datetime


class OrderOut(ApiModel):
    id: str
    enterprise_id: str
    sku: str
    quantity: int
    amount_fen: int
    status: Literal["pending_payment", "paid"]
    invoice: Literal["none", "issued", "returned"]
    created_at: datetime
    paid_at: datetime | None
    lines: list[QuoteLineOut]
    packages: list[PackageOut]
    gift_ids: list[str]
    years: int | None = None  # interop orders
    mode: str | None = None  # interop orders: the pricing mode of the quote
    licence: LicenceOut | None = None  # interop orders, once paid


def order_out(state: OrderState) -> OrderOut:
    o = state.order
    terms, licence = state.terms, state.licence
    return OrderOut(
        id=o.id,
        enterprise_id=o.enterprise_id,
        sku=o.sku,
        quantity=o.quantity,
        amount_fen=o.amount_fen,
        status=state.status,
        invoice=state.invoice.value,
        created_at=o.created_at,
        paid_at=state.paid_at,
        lines=[QuoteLineOut.model_validate(x, from_attributes=True) for x in state.lines],
        packages=[PackageOut.model_validate(p, from_attributes=True) for p in state.packages],
        gift_ids=[g.id for g in state.gifts],
        years=terms.years if terms else None,
        mode=terms.mode if terms else None,
        licence=LicenceOut.model_validate(licence, from_attributes=True) if licence else None,
    )


@api.route(
    "POST",
    "/v1/orders",
    summary="Create an order (docs/rules.md §2)",
    status=201,
    request_model=OrderIn,
    response_model=OrderOut,
    audit_action="order.create",
)
async def create_order(ctx: RequestContext, body: OrderIn) -> OrderOut:
    """PV packages (quantity) or interop accounts (sku wecom_interop: accounts, years),
    priced as quoted.  Refused with its own code: unverified, restricted industry, no
    agreement, voucher, more than 10,000 accounts."""
    await services.visible_enterprise(ctx, body.enterprise_id)
    quantity, years = body.counts()
    state = await operations.create_order(
        ctx.db,
        ctx.audit,
        operations.OrderRequest(
            enterprise_id=body.enterprise_id,
            id_type=body.id_type,
            sku=body.sku,
            quantity=quantity,
            agreement_accepted=body.agreement_accepted,
            voucher=body.voucher,
            years=years,
            mode=ctx.app[SETTINGS].interop_pricing,
        ),
    )
    return order_out(state)


@api.route("GET", "/v1/orders/{order_id}", summary="Read an order", response_model=OrderOut)
async def get_order(ctx: RequestContext, body: None, order_id: Id) -> OrderOut:
    return order_out(await services.visible_order(ctx, order_id))


class PaymentIn(ApiModel):
    reference: Text = Field(min_length=1, max_length=128, description="the payment provider's")
    paid_at: Timestamp | None = Field(default=None, description="default: now")


@api.route(
    "POST",
    "/v1/orders/{order_id}/pay",
    summary="Confirm payment: packages credited",
    request_model=PaymentIn,
    response_model=OrderOut,
    roles=("ops",),
    audit_action="order.pay",
)
async def pay_order(ctx: RequestContext, body: PaymentIn, order_id: Id) -> OrderOut:
    """Idempotent: a second confirmation credits no second set of buckets."""
    now = datetime.now(UTC)
    paid_at = body.paid_at or now
    if paid_at > now + timedelta(days=1):
        raise ValidationFailed("paid_at", "a payment cannot be confirmed in the future")
    await services.visible_order(ctx, order_id)
    state = await operations.pay_order(
        ctx.db,
        ctx.app[STORE],
        ctx.audit,
        order_id,
        reference=body.reference,
        paid_at=paid_at,
        tz=ctx.app[SETTINGS].timezone,
    )
    await services.alerts_changed(ctx, state.order.enterprise_id, alert_causes.PAYMENT)
    return order_out(state)


class InvoiceIn(ApiModel):
    number: Text = Field(min_length=1, max_length=64)


@api.route(
    "POST",
    "/v1/orders/{order_id}/invoice",
    summary="Record an invoice issued",
    request_model=InvoiceIn,
    response_model=OrderOut,
    roles=("ops",),
    audit_action="invoice.issued",
)
async def issue_invoice(ctx: RequestContext, body: InvoiceIn, order_id: Id) -> OrderOut:
    await services.visible_order(ctx, order_id)
    return order_out(
        await operations.invoice_event(ctx.db, ctx.audit, order_id, "issued", body.number)
    )


@api.route(
    "POST",
    "/v1/orders/{order_id}/invoice/return",
    summary="Record an invoice returned",
    request_model=InvoiceIn,
    response_model=OrderOut,
    roles=("ops",),
    audit_action="invoice.returned",
)
async def return_invoice(ctx: RequestContext, body: InvoiceIn, order_id: Id) -> OrderOut:
    await services.visible_order(ctx, order_id)
    return order_out(
        await operations.invoice_event(ctx.db, ctx.audit, order_id, "returned", body.number)
    )


class RefundIn(ApiModel):
    order_id: Id
    package_ids: list[BucketId] = Field(min_length=1, max_length=1000)


class RefundLineOut(ApiModel):
    package_id: str
    paid_cash_fen: int
    used_before: int
    recharged_pv: int
    used_after: int
    refund_fen: int


class RefundQuoteOut(ApiModel):
    order_id: str
    window_end: datetime
    lines: list[RefundLineOut]
    voided_gifts: list[str]
    gift_used_pv: int
    recharged: dict[str, int]
    dropped_pv: int
    voucher_fen: int
    total_refund_fen: int


def quote_out(quote: RefundQuote) -> RefundQuoteOut:
    return RefundQuoteOut(
        order_id=quote.order_id,
        window_end=quote.window_end,
        lines=[RefundLineOut.model_validate(x, from_attributes=True) for x in quote.lines],
        voided_gifts=list(quote.voided_gifts),
        gift_used_pv=quote.gift_used_pv,
        recharged=dict(quote.recharged),
        dropped_pv=quote.dropped_pv,
        voucher_fen=quote.voucher_fen,
        total_refund_fen=quote.total_refund_fen,
    )


@api.route(
    "POST",
    "/v1/refunds/quote",
    summary="Quote a refund of an order's packages",
    request_model=RefundIn,
    response_model=RefundQuoteOut,
)
async def quote_refund(ctx: RequestContext, body: RefundIn) -> RefundQuoteOut:
    """What the refund would be now, with the gift re-charge per package; nothing changes."""
    await services.visible_order(ctx, body.order_id)
    quote = await refunding.quote(
        ctx.db,
        ctx.app[STORE],
        body.order_id,
        body.package_ids,
        now=datetime.now(UTC),
        tz=ctx.app[SETTINGS].timezone,
    )
    return quote_out(quote)


class RefundOut(ApiModel):
    refund_id: str
    order_id: str
    enterprise_id: str
    package_ids: list[str]
    lines: list[RefundLineOut]
    total_refund_fen: int
    completed_at: datetime


@api.route(
    "POST",
    "/v1/refunds",
    summary="Refund an order's packages",
    status=201,
    request_model=RefundIn,
    response_model=RefundOut,
    roles=("ops", "merchant"),
    audit_action="refund.execute",
)
async def create_refund(ctx: RequestContext, body: RefundIn) -> RefundOut:
    """Needs an Idempotency-Key: a retry after any failure completes the refund once."""
    if ctx.idempotency_key is None:
        raise ValidationFailed("Idempotency-Key", "a refund needs an Idempotency-Key header")
    await services.visible_order(ctx, body.order_id)
    result = await refunding.execute(
        ctx.db,
        ctx.app[STORE],
        ctx.audit,
        body.order_id,
        body.package_ids,
        key=services.id_for_request(ctx, "refund") or "",
        actor=ctx.principal.actor,
        now=datetime.now(UTC),
        tz=ctx.app[SETTINGS].timezone,
    )
    await services.alerts_changed(ctx, result.enterprise_id, alert_causes.REFUND)
    return RefundOut(
        refund_id=result.refund_id,
        order_id=result.order_id,
        enterprise_id=result.enterprise_id,
        package_ids=list(result.package_ids),
        lines=[RefundLineOut.model_validate(x, from_attributes=True) for x in result.lines],
        total_refund_fen=result.total_refund_fen,
        completed_at=result.completed_at,
    )
