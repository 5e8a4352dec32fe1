"""Nothing grows without bound: what billing trims and purges on a schedule.

- The usage stream ``pvgate:usage`` loses the entries every consumer group is done with:
  ``XTRIM MINID`` up to the oldest entry some group still holds pending or has not yet
  read.  Billing acknowledges an entry only once its ledger transaction has committed,
  so what is trimmed is booked.  A stream no group reads is left alone: nothing has
  booked it.
- The dead-letter stream ``pvgate:usage:dead`` keeps its newest ``dead_letters_max``
  entries (``XTRIM MAXLEN ~``; each dead letter is also counted and logged).
- Idempotency records older than ``idempotency_hours`` go, with their stored responses:
  a key sent again after that is a new request (Stripe keeps keys for 24 hours too).
- The consumer's record of the stream entries it booked (``usage_batches``, what it
  de-duplicates on) is kept ``usage_batches_days`` (7): a repeat of an entry comes from a
  gateway retrying its XADD while Redis was away, or from a redelivery before the entry
  was acknowledged and trimmed — minutes, never days.  The usage it booked stays.
- WeCom events (``wecom_events``), their de-duplication keys (``wecom_event_keys``, whose
  window is a day) and the relay's outbox events, finished, go after ``wecom_events_days``
  (30): they are the relay's traffic, not the ledger's.

The ledger's money rows (orders, payments, packages, gifts, refunds, usage,
reconciliations) and the audit log are never purged, nor the alerts an enterprise was sent
(their delivery attempts have their own retention, `billing.alerts.scheduler`).
docs/architecture.md §9.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from prometheus_client import Counter, Gauge
from redis import exceptions as redis_errors

from billing.consumer import DEAD_LETTER_STREAM
from billing.db import Database
from billing.interop.tables import wecom_event_keys, wecom_events
from billing.schema import (
    alert_attempts,
    alert_deliveries,
    alert_events,
    idempotency_records,
    usage_batches,
)
from billing.wecom.relay import KIND as RELAYED
from metering.keys import USAGE_STREAM
from metering.scripts import RedisClient

log = logging.getLogger("pvgate.retention")

REMOVED = Counter(
    "pvgate_billing_retention_removed_total",
    "Entries and rows removed by retention, by what they were.",
    ["what"],
)
STREAM_LENGTH = Gauge(
    "pvgate_billing_usage_stream_length", "Entries in the usage stream after the last trim."
)


@dataclass(frozen=True, slots=True)
class Swept:
    usage_entries: int
    dead_letters: int
    idempotency_records: int
    usage_batches: int
    wecom_events: int

    def removed(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _id(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def _after(stream_id: str) -> str:
    ms, seq = _id(stream_id)
    return f"{ms}-{seq + 1}"


async def usage_kept_from(client: RedisClient, stream: str = USAGE_STREAM) -> str | None:
    """The oldest entry id some group still needs (held pending, or not yet read); None
    when no group reads the stream (or there is none), so nothing may be trimmed."""
    try:
        groups: Any = await client.xinfo_groups(stream)
    except redis_errors.ResponseError:  # no such stream
        return None
    if not groups:
        return None
    needed = []
    for group in groups:
        if int(group["pending"]):
            summary: Any = await client.xpending(stream, group["name"])
            needed.append(str(summary["min"]))
        else:
            needed.append(_after(str(group["last-delivered-id"])))
    return min(needed, key=_id)


async def trim_usage(client: RedisClient, stream: str = USAGE_STREAM) -> int:
    """Trim what every group is done with; the entries removed."""
    kept_from = await usage_kept_from(client, stream)
    if kept_from is None:
        return 0
    removed = int(await client.xtrim(stream, minid=kept_from, approximate=False))
    STREAM_LENGTH.set(int(await client.xlen(stream)))
    return removed


async def cap_dead_letters(client: RedisClient, keep: int) -> int:
    """About ``keep`` newest dead letters stay (``~``: Redis trims whole nodes)."""
    return int(await client.xtrim(DEAD_LETTER_STREAM, maxlen=keep, approximate=True))


async def _purge_before(db: Database, column: sa.Column[datetime], older_than: timedelta) -> int:
    """Delete the rows of ``column``'s table whose ``column`` is older than that."""
    cutoff = datetime.now(UTC) - older_than
    async with db.begin() as conn:
        result = await conn.execute(sa.delete(column.table).where(column < cutoff))
    return int(result.rowcount or 0)


async def purge_idempotency(db: Database, older_than: timedelta) -> int:
    """Stored responses, and claims a crash left without one (the key is free again)."""
    return await _purge_before(db, idempotency_records.c.created_at, older_than)


async def purge_usage_batches(db: Database, older_than: timedelta) -> int:
    return await _purge_before(db, usage_batches.c.recorded_at, older_than)


async def purge_wecom(db: Database, older_than: timedelta) -> int:
    """WeCom events and keys older than that, and the relay's finished outbox events; the
    WeCom events removed."""
    cutoff = datetime.now(UTC) - older_than
    other = alert_deliveries.alias("other")  # not the table a DELETE below works on
    pending = (
        sa.select(other.c.id)
        .where(other.c.event_id == alert_events.c.id, other.c.status == "pending")
        .correlate(alert_events)
    )
    relayed = sa.select(alert_events.c.id).where(
        alert_events.c.kind == RELAYED, alert_events.c.created_at < cutoff, ~sa.exists(pending)
    )
    deliveries = sa.select(alert_deliveries.c.id).where(alert_deliveries.c.event_id.in_(relayed))
    async with db.begin() as conn:
        await conn.execute(
            wecom_event_keys.delete().where(wecom_event_keys.c.first_seen_at < cutoff)
        )
        removed = await conn.execute(
            wecom_events.delete().where(wecom_events.c.received_at < cutoff)
        )
        await conn.execute(
            alert_attempts.delete().where(alert_attempts.c.delivery_id.in_(deliveries))
        )
        await conn.execute(
            alert_deliveries.delete().where(alert_deliveries.c.event_id.in_(relayed))
        )
        await conn.execute(alert_events.delete().where(alert_events.c.id.in_(relayed)))
    return int(removed.rowcount or 0)


async def sweep(
    db: Database,
    client: RedisClient,
    *,
    dead_letters_max: int,
    idempotency_hours: float,
    usage_batches_days: float,
    wecom_events_days: float,
) -> Swept:
    """One pass of everything above; counted by what was removed."""
    swept = Swept(
        await trim_usage(client),
        await cap_dead_letters(client, dead_letters_max),
        await purge_idempotency(db, timedelta(hours=idempotency_hours)),
        await purge_usage_batches(db, timedelta(days=usage_batches_days)),
        await purge_wecom(db, timedelta(days=wecom_events_days)),
    )
    removed = swept.removed()
    for what, n in removed.items():
        REMOVED.labels(what).inc(n)
    if any(removed.values()):
        log.info("retention removed %s", ", ".join(f"{n} {w}" for w, n in removed.items() if n))
    return swept


__all__ = [
    "Swept",
    "cap_dead_letters",
    "purge_idempotency",
    "purge_usage_batches",
    "purge_wecom",
    "sweep",
    "trim_usage",
]
