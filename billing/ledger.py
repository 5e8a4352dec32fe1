"""Reading the ledger: enterprises, orders and what derives from their rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.errors import NotFound
from billing.rules.refunds import InvoiceState
from billing.schema import (
    enterprises,
    gifts,
    invoice_events,
    order_lines,
    orders,
    packages,
    payments,
)


def row_dict(row: sa.Row[Any] | None) -> dict[str, Any] | None:
    return None if row is None else dict(row._mapping)


async def get_enterprise(conn: AsyncConnection, enterprise_id: str) -> dict[str, Any]:
    row = (
        await conn.execute(sa.select(enterprises).where(enterprises.c.id == enterprise_id))
    ).first()
    if row is None:
        raise NotFound(f"enterprise {enterprise_id!r} not found")
    return dict(row._mapping)


@dataclass(frozen=True, slots=True)
class OrderState:
    order: dict[str, Any]
    payment: dict[str, Any] | None
    invoice: InvoiceState
    lines: list[dict[str, Any]]
    packages: list[dict[str, Any]]
    gifts: list[dict[str, Any]]

    @property
    def status(self) -> str:
        return "paid" if self.payment else "pending_payment"

    @property
    def paid_at(self) -> datetime | None:
        return self.payment["paid_at"] if self.payment else None


async def get_order(conn: AsyncConnection, order_id: str) -> OrderState:
    order = row_dict((await conn.execute(sa.select(orders).where(orders.c.id == order_id))).first())
    if order is None:
        raise NotFound(f"order {order_id!r} not found")
    payment = row_dict(
        (await conn.execute(sa.select(payments).where(payments.c.order_id == order_id))).first()
    )
    last_invoice = (
        await conn.execute(
            sa.select(invoice_events.c.event)
            .where(invoice_events.c.order_id == order_id)
            .order_by(invoice_events.c.created_at.desc(), invoice_events.c.id.desc())
            .limit(1)
        )
    ).scalar()
    package_rows = (
        await conn.execute(
            sa.select(packages).where(packages.c.order_id == order_id).order_by(packages.c.position)
        )
    ).mappings()
    line_rows = (
        await conn.execute(
            sa.select(order_lines)
            .where(order_lines.c.order_id == order_id)
            .order_by(order_lines.c.position)
        )
    ).mappings()
    gift_rows = (
        await conn.execute(
            sa.select(gifts).where(gifts.c.order_id == order_id).order_by(gifts.c.granted_at)
        )
    ).mappings()
    return OrderState(
        order,
        payment,
        InvoiceState(last_invoice or "none"),
        [dict(r) for r in line_rows],
        [dict(r) for r in package_rows],
        [dict(r) for r in gift_rows],
    )
