"""Alert history for the API: events with their deliveries and every attempt; ops' retry."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.alerts.deliveries import resolve_channels
from billing.alerts.rows import AttemptRow, DeliveryRow, EventRow
from billing.audit import Auditor
from billing.db import Database
from billing.errors import Conflict, NotFound
from billing.schema import alert_attempts, alert_deliveries, alert_events


@dataclass(frozen=True, slots=True)
class DeliveryHistory:
    delivery: DeliveryRow
    attempts: tuple[AttemptRow, ...]


@dataclass(frozen=True, slots=True)
class EventHistory:
    event: EventRow
    deliveries: tuple[DeliveryHistory, ...]


async def events(
    conn: AsyncConnection,
    enterprise_id: str,
    *,
    kinds: Sequence[str] = (),
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
) -> list[EventHistory]:
    """The enterprise's events, newest first, each with its deliveries and their attempts."""
    conditions = [alert_events.c.enterprise_id == enterprise_id]
    if kinds:
        conditions.append(alert_events.c.kind.in_(list(kinds)))
    if since is not None:
        conditions.append(alert_events.c.occurred_at >= since)
    if until is not None:
        conditions.append(alert_events.c.occurred_at < until)
    found = [
        EventRow.from_row(r)
        for r in await conn.execute(
            sa.select(alert_events)
            .where(*conditions)
            .order_by(alert_events.c.occurred_at.desc(), alert_events.c.id.desc())
            .limit(limit)
        )
    ]
    return await _with_deliveries(conn, found)


async def _with_deliveries(conn: AsyncConnection, found: list[EventRow]) -> list[EventHistory]:
    if not found:
        return []
    delivered = [
        DeliveryRow.from_row(r)
        for r in await conn.execute(
            sa.select(alert_deliveries)
            .where(alert_deliveries.c.event_id.in_([e.id for e in found]))
            .order_by(alert_deliveries.c.created_at, alert_deliveries.c.id)
        )
    ]
    attempts: dict[str, list[AttemptRow]] = {}
    if delivered:
        for row in await conn.execute(
            sa.select(alert_attempts)
            .where(alert_attempts.c.delivery_id.in_([d.id for d in delivered]))
            .order_by(alert_attempts.c.delivery_id, alert_attempts.c.number)
        ):
            attempt = AttemptRow.from_row(row)
            attempts.setdefault(attempt.delivery_id, []).append(attempt)
    per_event: dict[str, list[DeliveryHistory]] = {}
    for d in delivered:
        per_event.setdefault(d.event_id, []).append(
            DeliveryHistory(d, tuple(attempts.get(d.id, ())))
        )
    return [EventHistory(e, tuple(per_event.get(e.id, ()))) for e in found]


async def delivery(conn: AsyncConnection, delivery_id: str) -> DeliveryHistory:
    row = (
        await conn.execute(sa.select(alert_deliveries).where(alert_deliveries.c.id == delivery_id))
    ).first()
    if row is None:
        raise NotFound(f"delivery {delivery_id!r} not found")
    attempts = await conn.execute(
        sa.select(alert_attempts)
        .where(alert_attempts.c.delivery_id == delivery_id)
        .order_by(alert_attempts.c.number)
    )
    return DeliveryHistory(DeliveryRow.from_row(row), tuple(map(AttemptRow.from_row, attempts)))


async def retry_delivery(
    db: Database, audit: Auditor, delivery_id: str, *, now: datetime
) -> DeliveryHistory:
    """Make a failed (or still pending) delivery due now, with its back-off started afresh."""
    async with db.begin() as conn:
        before = await delivery(conn, delivery_id)
        d = before.delivery
        if d.status == "sent":
            raise Conflict(f"delivery {delivery_id!r} was sent already")
        if d.lease_until is not None and d.lease_until > now:
            raise Conflict(f"delivery {delivery_id!r} is being attempted right now")
        channel = (await resolve_channels(conn, [d.channel_id])).get(d.channel_id)
        if channel is None:
            raise Conflict(f"delivery {delivery_id!r}: its channel was removed")
        if not channel.enabled:
            raise Conflict(f"delivery {delivery_id!r}: its channel is disabled; enable it first")
        await conn.execute(
            alert_deliveries.update()
            .where(alert_deliveries.c.id == delivery_id)
            .values(
                status="pending",
                schedule_pos=0,
                next_attempt_at=now,
                lease_owner=None,
                lease_until=None,
                updated_at=now,
            )
        )
        await audit(
            conn,
            "alerts.retry",
            d.enterprise_id,
            {"delivery_id": d.id, "status": d.status, "attempts": d.attempts},
            {"delivery_id": d.id, "status": "pending", "next_attempt_at": now},
        )
        return await delivery(conn, delivery_id)
