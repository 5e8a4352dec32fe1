"""Reading the ledger: enterprises, orders and what derives from their rows (`billing.rows`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, get_args

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.errors import NotFound
from billing.interop import licences
from billing.interop.records import InteropOrderRow, LicenceBatchRow
from billing.rows import (
    EnterpriseRow,
    GiftRow,
    OrderLineRow,
    OrderRow,
    PackageRow,
    PaymentRow,
)
from billing.rules.refunds import InvoiceState
from billing.schema import (
    enterprises,
    gifts,
    invoice_events,
    order_lines,
    orders,
    packages,
    payments,
    reconciliations,
    usage,
)

RECHARGE_ID_PREFIX = "rch."
"""The id prefix of the reconciliation rows that book a refund's gift re-charge."""

UsageSource = Literal["stream", "reconciliation", "recharge"]
USAGE_SOURCES: tuple[UsageSource, ...] = get_args(UsageSource)
_HOUR = timedelta(hours=1)


async def get_enterprise(conn: AsyncConnection, enterprise_id: str) -> EnterpriseRow:
    row = (
        await conn.execute(sa.select(enterprises).where(enterprises.c.id == enterprise_id))
    ).first()
    if row is None:
        raise NotFound(f"enterprise {enterprise_id!r} not found")
    return EnterpriseRow.from_row(row)


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderState:
    """An order with every row its state derives from (docs/rules.md §2)."""

    order: OrderRow
    payment: PaymentRow | None
    invoice: InvoiceState
    lines: tuple[OrderLineRow, ...]
    packages: tuple[PackageRow, ...]
    gifts: tuple[GiftRow, ...]
    # An interop order's terms, and its licence batch once paid (docs/rules.md §1.2).
    terms: InteropOrderRow | None = None
    licence: LicenceBatchRow | None = None

    @property
    def status(self) -> Literal["pending_payment", "paid"]:
        return "paid" if self.payment else "pending_payment"

    @property
    def paid_at(self) -> datetime | None:
        return self.payment.paid_at if self.payment else None


async def get_order(conn: AsyncConnection, order_id: str) -> OrderState:
    order = (await conn.execute(sa.select(orders).where(orders.c.id == order_id))).first()
    if order is None:
        raise NotFound(f"order {order_id!r} not found")
    payment = (
        await conn.execute(sa.select(payments).where(payments.c.order_id == order_id))
    ).first()
    last_invoice = (
        await conn.execute(
            sa.select(invoice_events.c.event)
            .where(invoice_events.c.order_id == order_id)
            .order_by(invoice_events.c.created_at.desc(), invoice_events.c.id.desc())
            .limit(1)
        )
    ).scalar()
    package_rows = await conn.execute(
        sa.select(packages).where(packages.c.order_id == order_id).order_by(packages.c.position)
    )
    line_rows = await conn.execute(
        sa.select(order_lines)
        .where(order_lines.c.order_id == order_id)
        .order_by(order_lines.c.position)
    )
    gift_rows = await conn.execute(
        sa.select(gifts).where(gifts.c.order_id == order_id).order_by(gifts.c.granted_at)
    )
    interop = order.kind == "interop"
    return OrderState(
        terms=await licences.order_terms(conn, order_id) if interop else None,
        licence=await licences.order_batch(conn, order_id) if interop else None,
        order=OrderRow.from_row(order),
        payment=None if payment is None else PaymentRow.from_row(payment),
        invoice=InvoiceState(last_invoice or "none"),
        lines=tuple(OrderLineRow.from_row(r) for r in line_rows),
        packages=tuple(PackageRow.from_row(r) for r in package_rows),
        gifts=tuple(GiftRow.from_row(r) for r in gift_rows),
    )


@dataclass(frozen=True, slots=True)
class UsageEntry:
    """PV the ledger counts against a bucket in one UTC hour, from one source.

    ``stream``: usage the gateways reported; ``reconciliation``: a difference with Redis
    booked by a reconciliation pass (negative when the ledger was ahead); ``recharge``: gift
    PV a refund charged again to the package.
    """

    hour: datetime
    bucket_id: str
    source: UsageSource
    pv: int


def _floor_hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def _ceil_hour(at: datetime) -> datetime:
    floor = _floor_hour(at)
    return floor if floor == at else floor + _HOUR


async def usage_entries(
    conn: AsyncConnection, enterprise_id: str, since: datetime, until: datetime
) -> list[UsageEntry]:
    """Every hour of usage of the enterprise that starts in ``[since, until)``, per source.

    A reconciliation or re-charge row counts in the hour of its ``created_at``: summed over
    the sources, a bucket's entries are the ledger's ``used`` of it — Redis's, once
    reconciled.  Times are UTC.
    """
    streamed = await conn.execute(
        sa.select(usage.c.hour, usage.c.bucket_id, usage.c.pv).where(
            usage.c.enterprise_id == enterprise_id, usage.c.hour >= since, usage.c.hour < until
        )
    )
    entries = [UsageEntry(hour, bucket, "stream", int(pv)) for hour, bucket, pv in streamed]
    booked = await conn.execute(
        sa.select(
            reconciliations.c.id,
            reconciliations.c.created_at,
            reconciliations.c.bucket_id,
            reconciliations.c.delta_pv,
        ).where(
            reconciliations.c.enterprise_id == enterprise_id,
            # Its hour starts in [since, until) exactly when it was made in this range.
            reconciliations.c.created_at >= _ceil_hour(since),
            reconciliations.c.created_at < _ceil_hour(until),
        )
    )
    for row_id, created_at, bucket, pv in booked:
        source: UsageSource = (
            "recharge" if row_id.startswith(RECHARGE_ID_PREFIX) else "reconciliation"
        )
        entries.append(UsageEntry(_floor_hour(created_at), bucket, source, int(pv)))
    return entries
