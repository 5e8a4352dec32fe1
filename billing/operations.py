"""Business operations (docs/rules.md §2, §3): enterprises, orders, payments, gifts, adjustments,
invoices.  Each is one ledger transaction with its audit row; those that change balances
then write through to Redis with idempotent scripts, so that a retry after a crash between
the two completes the work instead of doing it twice.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from billing.audit import Auditor
from billing.db import Database
from billing.errors import Conflict, NotFound, ValidationFailed
from billing.ledger import OrderState, get_enterprise, get_order
from billing.rules.calendar import Zone, add_years, package_expiry
from billing.rules.pricing import check_purchase, quote_packages
from billing.rules.refunds import InvoiceState, split_cash
from billing.schema import (
    adjustments,
    enterprises,
    gifts,
    invoice_events,
    order_lines,
    orders,
    packages,
    payments,
)
from metering import BalanceStore
from metering.buckets import BucketKind, BucketSpec, to_ms
from metering.errors import ScriptFailed
from metering.keys import validate_enterprise_id


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


# Enterprises ---------------------------------------------------------------------------

ENTERPRISE_FLAGS = ("verified", "flagged_abuse", "flagged_violation", "suspended")


async def register_enterprise(db: Database, audit: Auditor, data: dict[str, Any]) -> dict[str, Any]:
    """A new enterprise; ``data`` has id, id_type, name, industry, verified, partner_id."""
    try:
        validate_enterprise_id(data["id"])
    except ValueError as exc:
        raise ValidationFailed("id", str(exc)) from exc
    now = datetime.now(UTC)
    row = {
        **data,
        "flagged_abuse": False,
        "flagged_violation": False,
        "suspended": False,
        "created_at": now,
        "updated_at": now,
    }
    async with db.begin() as conn:
        exists = await conn.scalar(
            sa.select(enterprises.c.id).where(enterprises.c.id == data["id"])
        )
        if exists:
            raise Conflict(f"enterprise {data['id']!r} exists already")
        await conn.execute(enterprises.insert().values(**row))
        await audit(conn, "enterprise.register", data["id"], None, row)
    return row


async def update_enterprise(
    db: Database,
    store: BalanceStore,
    audit: Auditor,
    enterprise_id: str,
    changes: dict[str, bool],
    reason: str,
) -> dict[str, Any]:
    """Verify, flag (abuse / agreement violation) or suspend; suspension blocks the pages."""
    async with db.begin() as conn:
        before = await get_enterprise(conn, enterprise_id)
        after = {**before, **changes, "updated_at": datetime.now(UTC)}
        await conn.execute(
            enterprises.update()
            .where(enterprises.c.id == enterprise_id)
            .values(**changes, updated_at=after["updated_at"])
        )
        await audit(conn, "enterprise.update", enterprise_id, before, after, reason)
    if "suspended" in changes:
        await store.set_suspended(enterprise_id, changes["suspended"])
    return after


# Orders and payments ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrderRequest:
    enterprise_id: str
    id_type: str
    sku: str
    quantity: int
    agreement_accepted: object
    voucher: object = None


async def create_order(db: Database, audit: Auditor, request: OrderRequest) -> OrderState:
    """An order ``pending_payment`` after every precondition of docs/rules.md §2 holds."""
    quote = quote_packages(request.sku, request.quantity)
    async with db.begin() as conn:
        enterprise = await get_enterprise(conn, request.enterprise_id)
        if enterprise["id_type"] != request.id_type:
            raise ValidationFailed(
                "id_type",
                f"enterprise {request.enterprise_id!r} is "
                f"{enterprise['id_type']}, not {request.id_type}",
            )
        check_purchase(
            verified=enterprise["verified"],
            industry=enterprise["industry"],
            agreement_accepted=request.agreement_accepted,
            voucher=request.voucher,
        )
        order_id = new_id("ord")
        row = {
            "id": order_id,
            "enterprise_id": request.enterprise_id,
            "kind": "pv",
            "sku": request.sku,
            "quantity": request.quantity,
            "amount_fen": quote.total_fen,
            "voucher_fen": 0,
            "created_at": datetime.now(UTC),
        }
        await conn.execute(orders.insert().values(**row))
        lines = [
            {
                "order_id": order_id,
                "position": i,
                "item": line.item,
                "description": line.description,
                "quantity": line.quantity,
                "unit_price_fen": line.unit_price_fen,
                "amount_fen": line.amount_fen,
            }
            for i, line in enumerate(quote.lines)
        ]
        await conn.execute(order_lines.insert(), lines)
        await audit(conn, "order.create", request.enterprise_id, None, {**row, "lines": lines})
        return await get_order(conn, order_id)


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
                await _book_payment(conn, audit, state, reference, paid_at, tz)
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
    conn: Any, audit: Auditor, state: OrderState, reference: str, paid_at: datetime, tz: Zone
) -> None:
    order = state.order
    quote = quote_packages(order["sku"], order["quantity"])
    cash = order["amount_fen"] - order["voucher_fen"]
    await conn.execute(
        payments.insert().values(
            id=new_id("pay"),
            order_id=order["id"],
            cash_fen=cash,
            reference=reference,
            paid_at=paid_at,
        )
    )
    expires = package_expiry(paid_at, tz)
    rows = [
        {
            "id": package_id(order["id"], i),
            "order_id": order["id"],
            "enterprise_id": order["enterprise_id"],
            "position": i,
            "granted_pv": quote.pv_per_package,
            "paid_cash_fen": share,
            "paid_at": paid_at,
            "expires_at": expires,
        }
        for i, share in enumerate(split_cash(cash, order["quantity"]))
    ]
    await conn.execute(packages.insert(), rows)
    await audit(
        conn,
        "order.pay",
        order["enterprise_id"],
        {"status": "pending_payment"},
        {
            "status": "paid",
            "paid_at": paid_at,
            "reference": reference,
            "packages": [r["id"] for r in rows],
        },
    )


async def credit_packages(store: BalanceStore, state: OrderState) -> None:
    for p in state.packages:
        await store.credit(
            p["enterprise_id"],
            BucketSpec(
                id=p["id"],
                kind=BucketKind.PACKAGE,
                granted=p["granted_pv"],
                expires_at=to_ms(p["expires_at"]),
                ordered_at=to_ms(p["paid_at"]),
                order_id=p["order_id"],
            ),
        )


# Gifts and adjustments -------------------------------------------------------------------


async def grant_gift(
    db: Database,
    store: BalanceStore,
    audit: Auditor,
    enterprise_id: str,
    *,
    pv: int,
    reason: str,
    order_id: str | None,
    expires_at: datetime | None,
    tz: Zone,
    gift_id: str | None = None,
) -> dict[str, Any]:
    """Grant gift PV.  With a ``gift_id`` (derived from the request's idempotency key) a
    retry after a crash between the ledger and Redis completes the same gift."""
    if pv < 1:
        raise ValidationFailed("pv", "must be at least 1")
    gift_id = gift_id or new_id("gift")
    async with db.begin() as conn:
        await get_enterprise(conn, enterprise_id)
        found = (await conn.execute(sa.select(gifts).where(gifts.c.id == gift_id))).first()
        if found is not None:
            row: dict[str, Any] = dict(found._mapping)
        else:
            row = await _new_gift(
                conn, audit, gift_id, enterprise_id, pv, reason, order_id, expires_at, tz
            )
    await store.credit(
        enterprise_id,
        BucketSpec(
            id=row["id"],
            kind=BucketKind.GIFT,
            granted=row["granted_pv"],
            expires_at=to_ms(row["expires_at"]),
            ordered_at=to_ms(row["granted_at"]),
            order_id=row["order_id"] or "",
        ),
    )
    return row


async def _new_gift(
    conn: Any,
    audit: Auditor,
    gift_id: str,
    enterprise_id: str,
    pv: int,
    reason: str,
    order_id: str | None,
    expires_at: datetime | None,
    tz: Zone,
) -> dict[str, Any]:
    if order_id is not None:
        order = await get_order(conn, order_id)
        if order.order["enterprise_id"] != enterprise_id:
            raise NotFound(f"order {order_id!r} not found")
    now = datetime.now(UTC)
    row: dict[str, Any] = {
        "id": gift_id,
        "enterprise_id": enterprise_id,
        "order_id": order_id,
        "granted_pv": pv,
        "reason": reason,
        "granted_at": now,
        "expires_at": expires_at or add_years(now, 1, tz),
    }
    if row["expires_at"] <= now:
        raise ValidationFailed("expires_at", "must be in the future")
    await conn.execute(gifts.insert().values(**row))
    await audit(conn, "gift.grant", enterprise_id, None, row, reason)
    return row


async def adjust_bucket(
    db: Database,
    store: BalanceStore,
    audit: Auditor,
    enterprise_id: str,
    *,
    bucket_id: str,
    delta_pv: int,
    reason: str,
    actor: str,
    adjustment_id: str | None = None,
) -> dict[str, Any]:
    """An ops correction of a bucket's granted PV; the reason is mandatory.

    Redis applies it once per adjustment id, then the ledger books it if not booked yet,
    so a retry with the same id (derived from the idempotency key) after a crash between
    the two completes it instead of applying it twice.
    """
    if not reason.strip():
        raise ValidationFailed("reason", "an adjustment needs a reason")
    adjustment_id = adjustment_id or new_id("adj")
    async with db.engine.connect() as conn:
        await get_enterprise(conn, enterprise_id)
        owned = await conn.scalar(
            sa.union(
                sa.select(packages.c.id).where(
                    packages.c.id == bucket_id, packages.c.enterprise_id == enterprise_id
                ),
                sa.select(gifts.c.id).where(
                    gifts.c.id == bucket_id, gifts.c.enterprise_id == enterprise_id
                ),
            )
        )
    if owned is None:
        raise NotFound(f"bucket {bucket_id!r} not found")
    before, after = await _adjust_in_redis(store, enterprise_id, bucket_id, delta_pv, adjustment_id)
    row = {
        "id": adjustment_id,
        "enterprise_id": enterprise_id,
        "bucket_id": bucket_id,
        "delta_pv": after - before,
        "reason": reason,
        "actor": actor,
        "created_at": datetime.now(UTC),
    }
    async with db.begin() as conn:
        booked = (
            await conn.execute(sa.select(adjustments).where(adjustments.c.id == adjustment_id))
        ).first()
        if booked is not None:
            return dict(booked._mapping)
        await conn.execute(adjustments.insert().values(**row))
        await audit(
            conn, "bucket.adjust", enterprise_id, {"granted": before}, {"granted": after}, reason
        )
    return row


async def _adjust_in_redis(
    store: BalanceStore, enterprise_id: str, bucket_id: str, delta: int, adjustment_id: str
) -> tuple[int, int]:
    try:
        return await store.adjust(enterprise_id, bucket_id, delta, adjustment_id)
    except ScriptFailed as exc:
        raise ValidationFailed("delta_pv", str(exc).split("adjust: ")[-1]) from exc


def id_from_key(prefix: str, scope: str, key: str) -> str:
    """A stable id for what one idempotency key creates (same key, same object)."""
    digest = hashlib.sha256(f"{scope}\0{key}".encode()).hexdigest()[:20]
    return f"{prefix}_{digest}"


# Invoices ---------------------------------------------------------------------------------


async def invoice_event(
    db: Database, audit: Auditor, order_id: str, event: str, number: str
) -> OrderState:
    """An invoice issued for a paid order, or returned after being issued."""
    async with db.begin() as conn:
        state = await get_order(conn, order_id)
        if state.payment is None:
            raise Conflict(f"order {order_id!r} is not paid: no invoice")
        allowed = {
            "issued": (InvoiceState.NONE, InvoiceState.RETURNED),
            "returned": (InvoiceState.ISSUED,),
        }[event]
        if state.invoice not in allowed:
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
            state.order["enterprise_id"],
            {"invoice": state.invoice.value},
            {"invoice": event, "number": number},
        )
        return await get_order(conn, order_id)
