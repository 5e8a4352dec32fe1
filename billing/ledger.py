"""Reading the ledger: enterprises, orders and what derives from their rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

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
    reconciliations,
    usage,
)

RECHARGE_ID_PREFIX = "rch."
"""The id prefix of the reconciliation rows that book a refund's gift re-charge."""

UsageSource = Literal["stream", "reconciliation", "recharge"]
USAGE_SOURCES: tuple[UsageSource, ...] = get_args(UsageSource)
_HOUR = timedelta(hours=1)


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
