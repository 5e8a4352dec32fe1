"""The transactional outbox: state changes, their events and deliveries, in one transaction.

`apply` takes the changes an evaluation planned and, per enterprise, in one transaction:

1. ``UPDATE alert_settings SET version = version WHERE enterprise_id = :e AND version = :v``
   — a write first (SQLite then holds its write lock from the start, with no stale read
   snapshot to upgrade), taking the enterprise's row lock on PostgreSQL so that evaluators
   of one enterprise queue up; no row means the settings changed since they were read and
   the enterprise is handed back as *stale*, to be planned again;
2. each state moves with ONE conditional UPDATE — ``WHERE state = :before AND observed_ms
   <= :ms`` (a stale snapshot never undoes a newer one) — or, for a subject seen for the
   first time, an INSERT that a concurrent one makes fail;
3. when the kind fires and the row moved, the event and one delivery per enabled channel.

So however many billing processes evaluate the same enterprise at the same moment, one of
them moves each state and writes its event; the others change nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.alerts.config import load_channels, target_of
from billing.alerts.kinds import AlertConfig
from billing.alerts.rows import ChannelRow, EventRow
from billing.db import Database
from billing.schema import alert_deliveries, alert_events, alert_settings, alert_states


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """A state to move, planned by the evaluator from what it read."""

    enterprise_id: str
    kind: str
    subject: str
    before: str | None  # None: no row yet (the kind's initial state is implied)
    after: str
    observed_ms: int
    fires: bool
    data: Mapping[str, Any] = field(default_factory=dict)  # the event's data if it fires
    occurred_at: datetime


@dataclass(slots=True)
class Applied:
    events: list[EventRow] = field(default_factory=list)
    stale: set[str] = field(default_factory=set)  # enterprises whose settings changed


def new_event_id() -> str:
    return f"evt_{uuid.uuid4().hex[:24]}"


def event_payload(
    event_id: str, kind: str, occurred_at: datetime, data: Mapping[str, Any]
) -> dict[str, Any]:
    """The JSON a webhook receives (the Standard Webhooks shape: type, timestamp, data)."""
    return {"id": event_id, "type": kind, "timestamp": occurred_at.isoformat(), "data": dict(data)}


async def apply(
    db: Database, changes: Sequence[Change], configs: Mapping[str, AlertConfig], now: datetime
) -> Applied:
    """Write the changes (see the module docstring); the events written, the stale ones."""
    applied = Applied()
    by_enterprise: dict[str, list[Change]] = {}
    for change in sorted(changes, key=lambda c: (c.enterprise_id, c.kind, c.subject)):
        by_enterprise.setdefault(change.enterprise_id, []).append(change)
    if not by_enterprise:
        return applied
    async with db.begin() as conn:
        for enterprise_id, mine in by_enterprise.items():
            if not await _lock(conn, configs[enterprise_id]):
                applied.stale.add(enterprise_id)
                continue
            fired = [c for c in mine if await _move(conn, c, now) and c.fires]
            if fired:
                channels = (await load_channels(conn, [enterprise_id])).get(enterprise_id, [])
                for change in fired:
                    applied.events.append(await _write_event(conn, change, channels, now))
    return applied


async def _lock(conn: AsyncConnection, config: AlertConfig) -> bool:
    result = await conn.execute(
        alert_settings.update()
        .where(
            alert_settings.c.enterprise_id == config.enterprise_id,
            alert_settings.c.version == config.version,
        )
        .values(version=alert_settings.c.version)
    )
    return result.rowcount == 1


async def _move(conn: AsyncConnection, change: Change, now: datetime) -> bool:
    """Move one state; True if this transaction moved it."""
    key = (
        alert_states.c.enterprise_id == change.enterprise_id,
        alert_states.c.kind == change.kind,
        alert_states.c.subject == change.subject,
    )
    if change.before is None:
        exists = await conn.scalar(sa.select(alert_states.c.state).where(*key))
        if exists is not None:
            return False  # created meanwhile by another evaluator, which decided
        await conn.execute(
            alert_states.insert().values(
                enterprise_id=change.enterprise_id,
                kind=change.kind,
                subject=change.subject,
                state=change.after,
                observed_ms=change.observed_ms,
                changed_at=now,
            )
        )
        return True
    result = await conn.execute(
        alert_states.update()
        .where(
            *key,
            alert_states.c.state == change.before,
            alert_states.c.observed_ms <= change.observed_ms,
        )
        .values(state=change.after, observed_ms=change.observed_ms, changed_at=now)
    )
    return result.rowcount == 1


async def _write_event(
    conn: AsyncConnection, change: Change, channels: Sequence[ChannelRow], now: datetime
) -> EventRow:
    event_id = new_event_id()
    data = {"enterprise_id": change.enterprise_id, "subject": change.subject, **change.data}
    event = EventRow(
        id=event_id,
        enterprise_id=change.enterprise_id,
        kind=change.kind,
        subject=change.subject,
        payload=event_payload(event_id, change.kind, change.occurred_at, data),
        occurred_at=change.occurred_at,
        created_at=now,
    )
    await insert_event(conn, event, [c for c in channels if c.enabled], now)
    return event


async def insert_event(
    conn: AsyncConnection,
    event: EventRow,
    channels: Sequence[ChannelRow],
    now: datetime,
    *,
    lease: tuple[str, datetime] | None = None,
) -> list[str]:
    """The event and one pending delivery per channel, due now; their ids.

    With ``lease`` (owner, until) the deliveries are created claimed, their first attempt
    begun — for the test message that a request sends itself.
    """
    await conn.execute(
        alert_events.insert().values(
            id=event.id,
            enterprise_id=event.enterprise_id,
            kind=event.kind,
            subject=event.subject,
            payload=dict(event.payload),
            occurred_at=event.occurred_at,
            created_at=event.created_at,
        )
    )
    ids = [f"dlv_{uuid.uuid4().hex[:24]}" for _ in channels]
    rows = [
        {
            "id": delivery_id,
            "event_id": event.id,
            "enterprise_id": event.enterprise_id,
            "channel_id": c.id,
            "channel_type": c.type,
            "target": target_of(c),
            "status": "pending",
            "attempts": 1 if lease else 0,
            "schedule_pos": 0,
            "next_attempt_at": now,
            "lease_owner": lease[0] if lease else None,
            "lease_until": lease[1] if lease else None,
            "last_error": "",
            "sent_at": None,
            "created_at": now,
            "updated_at": now,
        }
        for delivery_id, c in zip(ids, channels, strict=True)
    ]
    if rows:
        await conn.execute(alert_deliveries.insert(), rows)
    return ids
