"""Interop orders and their licence batches (docs/rules.md §1.2, §2).

An interop order is an ordinary order — kind ``interop``, SKU ``wecom_interop``, quantity =
accounts, its priced lines in ``order_lines`` — whose terms (years, pricing mode) are in
``interop_orders``.  Its payment books one licence batch: the accounts valid from
``paid_at`` to ``paid_at + years`` calendar years.  No bucket in Redis: interop accounts
are not PV.  `billing.operations.orders` calls in here.
"""

from __future__ import annotations

import dataclasses

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.audit import Auditor
from billing.interop.records import InteropOrderRow, LicenceBatchRow
from billing.interop.rules import batch_period
from billing.interop.tables import interop_orders, licence_batches
from billing.rows import OrderRow, PaymentRow
from billing.rules.calendar import Zone
from billing.rules.pricing import InteropQuote


def batch_id(order_id: str) -> str:
    return f"{order_id}.lic"


async def record_terms(conn: AsyncConnection, order_id: str, quote: InteropQuote) -> None:
    """The terms of a new interop order, beside the order and its lines."""
    terms = InteropOrderRow(
        order_id=order_id, accounts=quote.accounts, years=quote.years, mode=quote.mode
    )
    await conn.execute(interop_orders.insert().values(**dataclasses.asdict(terms)))


async def order_terms(conn: AsyncConnection, order_id: str) -> InteropOrderRow | None:
    row = (
        await conn.execute(sa.select(interop_orders).where(interop_orders.c.order_id == order_id))
    ).first()
    return None if row is None else InteropOrderRow.from_row(row)


async def order_batch(conn: AsyncConnection, order_id: str) -> LicenceBatchRow | None:
    row = (
        await conn.execute(sa.select(licence_batches).where(licence_batches.c.order_id == order_id))
    ).first()
    return None if row is None else LicenceBatchRow.from_row(row)


async def book_batch(
    conn: AsyncConnection, audit: Auditor, order: OrderRow, payment: PaymentRow, tz: Zone
) -> LicenceBatchRow:
    """The licence batch of a paid interop order, in the payment's transaction.

    A purchase while another batch is valid adds this one beside it; it extends nothing.
    """
    terms = await order_terms(conn, order.id)
    if terms is None:
        raise LookupError(f"interop order {order.id!r} has no terms")
    period = batch_period(batch_id(order.id), terms.accounts, payment.paid_at, terms.years, tz)
    batch = LicenceBatchRow(
        id=period.ref,
        enterprise_id=order.enterprise_id,
        order_id=order.id,
        accounts=terms.accounts,
        years=terms.years,
        valid_from=period.starts_at,
        valid_until=period.ends_at,
    )
    await conn.execute(licence_batches.insert().values(**dataclasses.asdict(batch)))
    await audit(
        conn,
        "order.pay",
        order.enterprise_id,
        {"status": "pending_payment"},
        {
            "status": "paid",
            "paid_at": payment.paid_at,
            "reference": payment.reference,
            "licence_batch": batch,
        },
    )
    return batch


async def enterprise_batches(conn: AsyncConnection, enterprise_id: str) -> list[LicenceBatchRow]:
    """Every licence batch of the enterprise, oldest first."""
    rows = await conn.execute(
        sa.select(licence_batches)
        .where(licence_batches.c.enterprise_id == enterprise_id)
        .order_by(licence_batches.c.valid_from, licence_batches.c.id)
    )
    return [LicenceBatchRow.from_row(r) for r in rows]
