"""Relaying an accepted WeCom event to the enterprise's relay target, through the alerts outbox.

An event the relay decision accepts becomes, in the transaction that stores it, an alert
event of kind ``wecom_event`` and one delivery to a channel that is not an alert channel:
``wrl_…``, resolved by `resolve_channels` (registered with
`billing.alerts.deliveries.CHANNEL_RESOLVERS`) to a ``webhook`` channel whose URL is the
relay target and whose secret is the enterprise's relay secret.  From there the delivery
worker sends it like any webhook alert: Standard Webhooks headers (``webhook-id`` = the
alert event id, the same on every retry), signed by the ``standardwebhooks`` package,
through `billing.outbound` (public addresses only unless ``[alerts]`` allows others, no
redirects), retried on the alerts' back-off and finally marked failed; the attempts are in
``GET /v1/enterprises/{id}/alerts/events`` and ops may retry it.  The JSON body::

    {"id": "evt_…", "type": "wecom_event", "timestamp": "<received at>",
     "data": {"enterprise_id", "subject": "<wecom event id>", "wecom_event_id",
              "received_at", "msg_type", "event", "change_type", "userid",
              "message": {…the XML as JSON…}, "xml": "<xml>…</xml>"}}
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.alerts import deliveries
from billing.alerts.outbox import event_payload, insert_event, new_event_id
from billing.alerts.rows import ChannelRow, EventRow
from billing.interop.records import WeComEventRow, WeComSettingsRow
from billing.interop.tables import wecom_settings
from billing.schema import alert_deliveries
from billing.wecom.messages import Event

KIND = "wecom_event"
CHANNEL_PREFIX = "wrl_"


def channel_id(enterprise_id: str) -> str:
    """The relay channel's id: not an alert channel's, short enough for its columns."""
    return CHANNEL_PREFIX + hashlib.sha256(enterprise_id.encode()).hexdigest()[:28]


def relay_channel(settings: WeComSettingsRow) -> ChannelRow:
    return ChannelRow(
        id=channel_id(settings.enterprise_id),
        enterprise_id=settings.enterprise_id,
        type="webhook",
        enabled=True,
        config={"url": settings.relay_url},
        secret=settings.relay_secret,
        previous_secret=None,
        previous_secret_until=None,
        disabled_reason="",
        created_at=settings.updated_at,
        updated_at=settings.updated_at,
    )


def relay_data(row: WeComEventRow, event: Event) -> dict[str, Any]:
    return {
        "wecom_event_id": row.id,
        "received_at": row.received_at.isoformat(),
        "msg_type": row.msg_type,
        "event": row.event,
        "change_type": row.change_type,
        "userid": row.userid,
        "message": event.fields,
        "xml": row.message,
    }


async def queue_relay(
    conn: AsyncConnection,
    row: WeComEventRow,
    event: Event,
    settings: WeComSettingsRow,
    *,
    now: datetime,
) -> None:
    """The alert event and its delivery to the relay target, due at ``now`` (the alerts'
    clock), in the caller's transaction."""
    event_id = new_event_id()
    data = {"enterprise_id": row.enterprise_id, "subject": row.id, **relay_data(row, event)}
    alert = EventRow(
        id=event_id,
        enterprise_id=row.enterprise_id,
        kind=KIND,
        subject=row.id,
        payload=event_payload(event_id, KIND, row.received_at, data),
        occurred_at=row.received_at,
        created_at=now,
    )
    await insert_event(conn, alert, [relay_channel(settings)], now)


async def resolve_channels(conn: AsyncConnection, ids: list[str]) -> dict[str, ChannelRow]:
    """The relay channels named by deliveries (the current target and secret of each)."""
    owners = await conn.execute(
        sa.select(alert_deliveries.c.channel_id, alert_deliveries.c.enterprise_id)
        .where(alert_deliveries.c.channel_id.in_(ids))
        .distinct()
    )
    enterprise_ids = sorted({enterprise for _, enterprise in owners})
    rows = await conn.execute(
        sa.select(wecom_settings).where(wecom_settings.c.enterprise_id.in_(enterprise_ids))
    )
    channels = [relay_channel(WeComSettingsRow.from_row(r)) for r in rows]
    return {c.id: c for c in channels if c.id in ids}


deliveries.CHANNEL_RESOLVERS[CHANNEL_PREFIX] = resolve_channels
