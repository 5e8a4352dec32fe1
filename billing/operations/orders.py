"""Orders, their payment and their invoices (docs/rules.md §2, §7)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.audit import Auditor
from billing.db import Database
from billing.errors import Conflict, ValidationFailed
from billing.interop import licences
from billing.interop.rules import INTEROP_SKU
from billing.ledger import OrderState, get_enterprise, get_order
from billing.operations.ids import new_id
from billing.rows import OrderLineRow, OrderRow, PackageRow, PaymentRow
from billing.rules.calendar import Zone, package_expiry
from billing.rules.pricing import (
    InteropQuote,
    PackageQuote,
    PricingMode,
    check_purchase,
    quote_interop,
    quote_packages,
)
from billing.rules.refunds import InvoiceState, split_cash
from billing.schema import invoice_events, order_lines, orders, packages, payments
from metering import BalanceStore
from metering.buckets import BucketKind, BucketSpec, to_ms


@dataclass(frozen=True, slots=True)
class OrderRequest:
    enterprise_id: str
    id_type: str
    sku: str
    quantity: int  # packages, or interop accounts (SKU wecom_interop)
    agreement_accepted: object
    voucher: object = None
    years: int = 1  # interop only
    mode: PricingMode = "graduated"  # interop only: the configured pricing mode


def _quote(request: OrderRequest) -> PackageQuote | InteropQuote:
    if request.sku == INTEROP_SKU:
        return quote_interop(request.quantity, request.years, request.mode)
    return quote_packages(request.sku, request.quantity)


async def create_order(db: Database, audit: Auditor, request: OrderRequest) -> OrderState:
    """An order ``pending_payment`` after every precondition of docs/rules.md §2 holds."""
    quote = _quote(request)
    async with db.begin() as conn:
        enterprise = await get_enterprise(conn, request.enterprise_id)
        if enterprise.id_type != request.id_type:
            raise ValidationFailed(
                "id_type",
                f"enterprise {request.enterprise_id!r} is "
                f"{enterprise.id_type}, not {request.id_type}",
            )
        check_purchase(
            verified=enterprise.verified,
            industry=enterprise.industry,
            agreement_accepted=request.agreement_accepted,
            voucher=request.voucher,
        )
        order = OrderRow(
            id=new_id("ord"),
            enterprise_id=request.enterprise_id,
            kind="interop" if isinstance(quote, InteropQuote) else "pv",
            sku=request.sku,
            quantity=request.quantity,
            amount_fen=quote.total_fen,
            voucher_fen=0,
            created_at=datetime.now(UTC),
        )
        await conn.execute(orders.insert().values(**dataclasses.asdict(order)))
        lines = [
            OrderLineRow(
                order_id=order.id,
                position=i,
                item=line.item,
                description=line.description,
                quantity=line.quantity,
                unit_price_fen=line.unit_price_fen,
                amount_fen=line.amount_fen,
            )
            for i, line in enumerate(quote.lines)
        ]
        await conn.execute(order_lines.insert(), [dataclasses.asdict(line) for line in lines])
        if isinstance(quote, InteropQuote):
            await licences.record_terms(conn, order.id, quote)
        after = {**dataclasses.asdict(order), "lines": lines}
        await audit(conn, "order.create", request.enterprise_id, None, after)
        return await get_order(conn, order.id)


def package_id(order_id: str, position: int) -> str:
    # Zero-padded: packages of one order share ordered_at, and ids break the tie.
    return f"{order_id}.p{position:03d}"


async def pay_order(
    db: Database,
    store: BalanceStore,
    audit: Auditor,
    order_id: str,
    *,
    reference: str,
    paid_at: datetime,
    tz: Zone,
) -> OrderState:
    """Confirm payment: the order is paid and each package becomes a Redis bucket.

    Idempotent: a second confirmation changes nothing in the ledger and credits the same
    buckets again, which the credit script ignores — so a crash after the commit and
    before the credits is healed by retrying.
    """
    if not datetime(1970, 1, 1, tzinfo=UTC) <= paid_at <= datetime.now(UTC) + timedelta(days=1):
        raise ValidationFailed("paid_at", f"{paid_at.isoformat()} is not a possible payment time")
    try:
        async with db.begin() as conn:
            state = await get_order(conn, order_id)
            if state.payment is None:
                await _book_payment(conn, audit, state.order, reference, paid_at, tz)
                state = await get_order(conn, order_id)
    except sa.exc.IntegrityError:
        # A concurrent confirmation booked the payment first (payments.order_id is
        # unique): this one carries on from what that one booked.
        async with db.engine.connect() as conn:
            state = await get_order(conn, order_id)
        if state.payment is None:
            raise
    await credit_packages(store, state)
    return state


async def _book_payment(
    conn: AsyncConnection,
    audit: Auditor,
    order: OrderRow,
    reference: str,
    paid_at: datetime,
    tz: Zone,
) -> None:
    cash = order.amount_fen - order.voucher_fen
    payment = PaymentRow(
        id=new_id("pay"), order_id=order.id, cash_fen=cash, reference=reference, paid_at=paid_at
    )
    await conn.execute(payments.insert().values(**dataclasses.asdict(payment)))
    if order.kind == "interop":  # a licence batch, no PV bucket (docs/rules.md §1.2)
        await licences.book_batch(conn, audit, order, payment, tz)
        return
    quote = quote_packages(order.sku, order.quantity)
    expires = package_expiry(paid_at, tz)
    booked = [
        PackageRow(
            id=package_id(order.id, i),
            order_id=order.id,
            enterprise_id=order.enterprise_id,
            position=i,
            granted_pv=quote.pv_per_package,
            paid_cash_fen=share,
            paid_at=paid_at,
            expires_at=expires,
        )
        for i, share in enumerate(split_cash(cash, order.quantity))
    ]
    await conn.execute(packages.insert(), [dataclasses.asdict(p) for p in booked])
    await audit(
        conn,
        "order.pay",
        order.enterprise_id,
        {"status": "pending_payment"},
        {
            "status": "paid",
            "paid_at": paid_at,
            "reference": reference,
            "packages": [p.id for p in booked],
        },
    )


async def credit_packages(store: BalanceStore, state: OrderState) -> None:
    for p in state.packages:
        await store.credit(
            p.enterprise_id,
            BucketSpec(
                id=p.id,
                kind=BucketKind.PACKAGE,
                granted=p.granted_pv,
                expires_at=to_ms(p.expires_at),
                ordered_at=to_ms(p.paid_at),
                order_id=p.order_id,
            ),
        )


_INVOICE_FROM = {
    "issued": (InvoiceState.NONE, InvoiceState.RETURNED),
    "returned": (InvoiceState.ISSUED,),
}


async def invoice_event(
    db: Database, audit: Auditor, order_id: str, event: str, number: str
) -> OrderState:
    """An invoice issued for a paid order, or returned after being issued."""
    async with db.begin() as conn:
        state = await get_order(conn, order_id)
        if state.payment is None:
            raise Conflict(f"order {order_id!r} is not paid: no invoice")
        if state.invoice not in _INVOICE_FROM[event]:
            raise Conflict(
                f"order {order_id!r}: invoice is {state.invoice.value}, cannot be {event}"
            )
        await conn.execute(
            invoice_events.insert().values(
                id=new_id("inv"),
                order_id=order_id,
                event=event,
                number=number,
                created_at=datetime.now(UTC),
            )
        )
        await audit(
            conn,
            f"invoice.{event}",
            state.order.enterprise_id,
            {"invoice": state.invoice.value},
            {"invoice": event, "number": number},
        )
        return await get_order(conn, order_id)
