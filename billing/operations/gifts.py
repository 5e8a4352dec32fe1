"""Gift PV and ops' corrections of a bucket's granted PV (docs/rules.md §3)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.audit import Auditor
from billing.db import Database
from billing.errors import NotFound, ValidationFailed
from billing.ledger import get_enterprise, get_order
from billing.operations.ids import new_id
from billing.rows import AdjustmentRow, GiftRow
from billing.rules.calendar import Zone, add_years
from billing.schema import adjustments, gifts, packages
from metering import BalanceStore
from metering.buckets import BucketKind, BucketSpec, to_ms
from metering.errors import ScriptFailed


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
) -> GiftRow:
    """Grant gift PV.  With a ``gift_id`` (derived from the request's idempotency key) a
    retry after a crash between the ledger and Redis completes the same gift."""
    if pv < 1:
        raise ValidationFailed("pv", "must be at least 1")
    now = datetime.now(UTC)
    wanted = GiftRow(
        id=gift_id or new_id("gift"),
        enterprise_id=enterprise_id,
        order_id=order_id,
        granted_pv=pv,
        reason=reason,
        granted_at=now,
        expires_at=expires_at or add_years(now, 1, tz),
    )
    async with db.begin() as conn:
        await get_enterprise(conn, enterprise_id)
        found = (await conn.execute(sa.select(gifts).where(gifts.c.id == wanted.id))).first()
        if found is not None:
            gift = GiftRow.from_row(found)
        else:
            await _book_gift(conn, audit, wanted)
            gift = wanted
    await store.credit(
        enterprise_id,
        BucketSpec(
            id=gift.id,
            kind=BucketKind.GIFT,
            granted=gift.granted_pv,
            expires_at=to_ms(gift.expires_at),
            ordered_at=to_ms(gift.granted_at),
            order_id=gift.order_id or "",
        ),
    )
    return gift


async def _book_gift(conn: AsyncConnection, audit: Auditor, gift: GiftRow) -> None:
    if gift.order_id is not None:
        order = await get_order(conn, gift.order_id)
        if order.order.enterprise_id != gift.enterprise_id:
            raise NotFound(f"order {gift.order_id!r} not found")
    if gift.expires_at <= gift.granted_at:
        raise ValidationFailed("expires_at", "must be in the future")
    await conn.execute(gifts.insert().values(**dataclasses.asdict(gift)))
    await audit(conn, "gift.grant", gift.enterprise_id, None, gift, gift.reason)


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
) -> AdjustmentRow:
    """An ops correction of a bucket's granted PV; the reason is mandatory.

    Redis applies it once per adjustment id, then the ledger books it if not booked yet,
    so a retry with the same id (derived from the idempotency key) after a crash between
    the two completes it instead of applying it twice.
    """
    if not reason.strip():
        raise ValidationFailed("reason", "an adjustment needs a reason")
    adjustment_id = adjustment_id or new_id("adj")
    await _check_owned(db, enterprise_id, bucket_id)
    before, after = await _adjust_in_redis(store, enterprise_id, bucket_id, delta_pv, adjustment_id)
    row = AdjustmentRow(
        id=adjustment_id,
        enterprise_id=enterprise_id,
        bucket_id=bucket_id,
        delta_pv=after - before,
        reason=reason,
        actor=actor,
        created_at=datetime.now(UTC),
    )
    async with db.begin() as conn:
        booked = (
            await conn.execute(sa.select(adjustments).where(adjustments.c.id == adjustment_id))
        ).first()
        if booked is not None:
            return AdjustmentRow.from_row(booked)
        await conn.execute(adjustments.insert().values(**dataclasses.asdict(row)))
        await audit(
            conn, "bucket.adjust", enterprise_id, {"granted": before}, {"granted": after}, reason
        )
    return row


async def _check_owned(db: Database, enterprise_id: str, bucket_id: str) -> None:
    """NotFound unless the bucket is a package or gift of the enterprise."""
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


async def _adjust_in_redis(
    store: BalanceStore, enterprise_id: str, bucket_id: str, delta: int, adjustment_id: str
) -> tuple[int, int]:
    try:
        return await store.adjust(enterprise_id, bucket_id, delta, adjustment_id)
    except ScriptFailed as exc:
        raise ValidationFailed("delta_pv", str(exc).split("adjust: ")[-1]) from exc
