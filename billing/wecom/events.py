"""Each authenticated WeCom event: stored, de-duplicated, and relayed or dropped.

In one transaction: the message's key is claimed in ``wecom_event_keys`` (the same key again
within the window — WeCom retrying a callback it thinks failed — is a ``duplicate``); the
relay decision is taken on the accounts as of the event's arrival
(`billing.interop.rules.relay_decision`, with the ends not yet settled applied, so it is
exact at an expiry instant); the event is stored with its result in ``wecom_events``; and a
relayed one is handed to the relay (`Relay`), which writes its delivery into the outbox in
that same transaction.  A dropped event is never replayed, whatever is bought later.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.db import Database
from billing.interop.accounts import InteropPolicy, read_view
from billing.interop.records import WeComEventRow
from billing.interop.rules import relay_decision
from billing.interop.runtime import Relay
from billing.interop.tables import wecom_event_keys, wecom_events
from billing.operations.ids import new_id
from billing.rows import EnterpriseRow
from billing.wecom.config import read_settings
from billing.wecom.messages import Event


async def _insert_new(conn: AsyncConnection, values: dict[str, Any]) -> bool:
    """INSERT … ON CONFLICT DO NOTHING; whether the row was new."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(wecom_event_keys).values(**values).on_conflict_do_nothing()
    return (await conn.execute(statement)).rowcount == 1


async def first_sight(
    conn: AsyncConnection, enterprise_id: str, key: str, now: datetime, window: timedelta
) -> bool:
    """Claim ``key``: True if it was not seen within ``window`` before ``now``."""
    if await _insert_new(
        conn, {"enterprise_id": enterprise_id, "msg_key": key, "first_seen_at": now}
    ):
        return True
    where = (wecom_event_keys.c.enterprise_id == enterprise_id) & (
        wecom_event_keys.c.msg_key == key
    )
    seen = await conn.scalar(sa.select(wecom_event_keys.c.first_seen_at).where(where))
    if seen is None or now - seen < window:
        return False
    # Seen long ago: a new message after all; a concurrent claim of it wins once.
    renewed = await conn.execute(
        wecom_event_keys.update()
        .where(where, wecom_event_keys.c.first_seen_at == seen)
        .values(first_seen_at=now)
    )
    return renewed.rowcount == 1


async def receive(
    db: Database,
    enterprise: EnterpriseRow,
    event: Event,
    *,
    now: datetime,
    policy: InteropPolicy,
    window: timedelta,
    relay: Relay | None,
) -> WeComEventRow:
    """Store ``event`` with its result — relayed, dropped_inactive or duplicate."""
    async with db.begin() as conn:
        if not await first_sight(conn, enterprise.id, event.key, now, window):
            result = "duplicate"
        else:
            view = await read_view(conn, enterprise, now, policy)
            holds = event.userid is not None and view.holds(event.userid)
            result = relay_decision(event.userid, holds, view.active)
        row = WeComEventRow(
            id=new_id("wev"),
            enterprise_id=enterprise.id,
            received_at=now,
            msg_key=event.key,
            msg_type=event.msg_type,
            event=event.event,
            change_type=event.change_type,
            userid=event.userid,
            result=result,
            message=event.xml,
        )
        await conn.execute(wecom_events.insert().values(**dataclasses.asdict(row)))
        if result == "relayed" and relay is not None:
            settings = await read_settings(conn, enterprise.id)
            if settings is not None:
                await relay(conn, row, event, settings)
    return row


async def list_events(
    conn: AsyncConnection,
    enterprise_id: str,
    *,
    result: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
) -> list[WeComEventRow]:
    """The enterprise's events, newest first."""
    query = sa.select(wecom_events).where(wecom_events.c.enterprise_id == enterprise_id)
    if result is not None:
        query = query.where(wecom_events.c.result == result)
    if since is not None:
        query = query.where(wecom_events.c.received_at >= since)
    if until is not None:
        query = query.where(wecom_events.c.received_at < until)
    rows = await conn.execute(
        query.order_by(wecom_events.c.received_at.desc(), wecom_events.c.id.desc()).limit(limit)
    )
    return [WeComEventRow.from_row(r) for r in rows]
