"""Deliveries in the ledger: claimed with a lease, every attempt recorded, retried or ended.

`claim` is one transaction: the due deliveries are leased to the worker by one
``UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED LIMIT n) RETURNING`` — on
PostgreSQL concurrent workers skip each other's rows; SQLite has one writer at a time, and
the statement being a write from the start, a second process simply queues — then each
robot's limit (20 a minute) is checked by counting its attempts of the last minute in SQL,
under a transaction-scoped advisory lock per robot on PostgreSQL, so that it holds across
billing processes; a claim over the limit is handed back, due when a slot frees.  Finally
the attempts begin: a row each (an earlier one left open by a worker that died is marked
``interrupted``).

`record` books outcomes, many per transaction: the attempt's duration, status, error and
reply excerpt, and the delivery sent, failed, disabled, or due again after its back-off.

A delivery names its channel by id.  Alert channels are rows of ``alert_channels``; another
feature may deliver through the same outbox to channels of its own (the WeCom event relay
does) by registering, under the prefix of its channel ids, a resolver in
`CHANNEL_RESOLVERS`: ``async (conn, ids) -> {id: ChannelRow}``.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.alerts import metrics
from billing.alerts.channels.base import Job, Outcome
from billing.alerts.retry import next_delay
from billing.alerts.rows import ChannelRow, EventRow
from billing.db import Database
from billing.schema import alert_attempts, alert_channels, alert_deliveries, alert_events

ROBOT_WINDOW = timedelta(minutes=1)

ChannelResolver = Callable[[AsyncConnection, list[str]], Awaitable[dict[str, ChannelRow]]]
CHANNEL_RESOLVERS: dict[str, ChannelResolver] = {}  # channel id prefix → resolver


async def resolve_channels(conn: AsyncConnection, ids: Sequence[str]) -> dict[str, ChannelRow]:
    """The channels of these ids: alert channels, and those of registered resolvers."""
    wanted = sorted(set(ids))
    found = {
        c.id: c
        for c in map(
            ChannelRow.from_row,
            await conn.execute(sa.select(alert_channels).where(alert_channels.c.id.in_(wanted))),
        )
    }
    for prefix, resolve in sorted(CHANNEL_RESOLVERS.items()):
        theirs = [i for i in wanted if i.startswith(prefix) and i not in found]
        if theirs:
            found.update(await resolve(conn, theirs))
    return found


@dataclass(frozen=True, slots=True)
class Claimed:
    job: Job
    schedule_pos: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Finished:
    claimed: Claimed
    outcome: Outcome
    finished_at: datetime
    duration_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimRules:
    owner: str
    lease: timedelta
    robot_per_minute: int


def _due(now: datetime) -> list[sa.ColumnElement[bool]]:
    return [
        alert_deliveries.c.status == "pending",
        alert_deliveries.c.next_attempt_at <= now,
        sa.or_(alert_deliveries.c.lease_until.is_(None), alert_deliveries.c.lease_until < now),
    ]


async def claim(
    db: Database, rules: ClaimRules, now: datetime, limit: int, busy: Sequence[str] = ()
) -> list[Claimed]:
    """Lease up to ``limit`` due deliveries (none to the ``busy`` targets) and begin them."""
    wanted = sa.select(alert_deliveries.c.id).where(*_due(now))
    if busy:
        wanted = wanted.where(alert_deliveries.c.target.notin_(list(busy)))
    wanted = (
        wanted.order_by(alert_deliveries.c.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    async with db.begin() as conn:
        leased = (
            (
                await conn.execute(
                    alert_deliveries.update()
                    .where(alert_deliveries.c.id.in_(wanted.scalar_subquery()))
                    .values(
                        lease_owner=rules.owner,
                        lease_until=now + rules.lease,
                        attempts=alert_deliveries.c.attempts + 1,
                        updated_at=now,
                    )
                    .returning(*alert_deliveries.c)
                )
            )
            .mappings()
            .all()
        )
        kept = await _within_robot_limits(conn, list(leased), rules, now)
        if not kept:
            return []
        await _begin(conn, kept, rules.owner, now)
        return await _jobs(conn, kept)


async def _within_robot_limits(
    conn: AsyncConnection, leased: list[sa.RowMapping], rules: ClaimRules, now: datetime
) -> list[sa.RowMapping]:
    robots: dict[str, list[sa.RowMapping]] = {}
    kept = []
    for row in sorted(leased, key=lambda r: (r["next_attempt_at"], r["id"])):
        if row["channel_type"] == "wecom_robot":
            robots.setdefault(row["target"], []).append(row)
        else:
            kept.append(row)
    for target, rows in sorted(robots.items()):
        if conn.dialect.name == "postgresql":
            key = int(target.rsplit(":", 1)[-1][:15], 16)
            await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))
        recent = list(
            (
                await conn.execute(
                    sa.select(alert_attempts.c.started_at)
                    .where(
                        alert_attempts.c.target == target,
                        alert_attempts.c.started_at > now - ROBOT_WINDOW,
                    )
                    .order_by(alert_attempts.c.started_at)
                )
            ).scalars()
        )
        room = max(0, rules.robot_per_minute - len(recent))
        kept += rows[:room]
        if len(rows) > room:
            window = sorted([*recent, *([now] * room)])
            free_at = window[len(window) - rules.robot_per_minute] + ROBOT_WINDOW
            await conn.execute(
                alert_deliveries.update()
                .where(alert_deliveries.c.id.in_([r["id"] for r in rows[room:]]))
                .values(
                    lease_owner=None,
                    lease_until=None,
                    attempts=alert_deliveries.c.attempts - 1,
                    next_attempt_at=max(free_at, now),
                )
            )
    return kept


async def _begin(
    conn: AsyncConnection, kept: Sequence[sa.RowMapping], owner: str, now: datetime
) -> None:
    await begin_attempts(conn, [(r["id"], r["attempts"], r["target"]) for r in kept], owner, now)


async def begin_attempts(
    conn: AsyncConnection, attempts: Sequence[tuple[str, int, str]], owner: str, now: datetime
) -> None:
    """Open an attempt row for each (delivery, number, target); close any left open."""
    await conn.execute(
        alert_attempts.update()
        .where(
            alert_attempts.c.delivery_id.in_([d for d, _n, _t in attempts]),
            alert_attempts.c.outcome.is_(None),
        )
        .values(outcome="interrupted", error="its worker stopped before recording an outcome")
    )
    await conn.execute(
        alert_attempts.insert(),
        [
            {
                "delivery_id": delivery_id,
                "number": number,
                "target": target,
                "worker": owner,
                "started_at": now,
                "duration_ms": None,
                "outcome": None,
                "status_code": None,
                "error": "",
                "response": "",
            }
            for delivery_id, number, target in attempts
        ],
    )


async def _jobs(conn: AsyncConnection, kept: Sequence[sa.RowMapping]) -> list[Claimed]:
    event_ids = sorted({r["event_id"] for r in kept})
    channel_ids = sorted({r["channel_id"] for r in kept})
    events = {
        e.id: e
        for e in map(
            EventRow.from_row,
            await conn.execute(sa.select(alert_events).where(alert_events.c.id.in_(event_ids))),
        )
    }
    channels = await resolve_channels(conn, channel_ids)  # alert channels and registered ones
    return [
        Claimed(
            Job(
                delivery_id=r["id"],
                attempt=r["attempts"],
                event=events[r["event_id"]],
                channel=channels.get(r["channel_id"]),
                channel_type=r["channel_type"],
                target=r["target"],
            ),
            r["schedule_pos"],
        )
        for r in kept
    ]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryRules:
    schedule: tuple[float, ...]
    jitter: float
    rand: Callable[[], float] = random.random


async def record(db: Database, owner: str, done: Sequence[Finished], rules: RetryRules) -> None:
    """Book the outcomes (one transaction) and count them in the metrics."""
    if not done:
        return
    async with db.begin() as conn:
        for finished in done:
            await _book(conn, owner, finished, rules)
    for finished in done:
        job, outcome = finished.claimed.job, finished.outcome
        metrics.SENT.labels(job.channel_type, outcome.result).inc()
        if outcome.result == "sent":
            latency = (finished.finished_at - job.event.occurred_at).total_seconds()
            metrics.DELIVERY_SECONDS.observe(max(0.0, latency))


async def _book(conn: AsyncConnection, owner: str, finished: Finished, rules: RetryRules) -> None:
    job, outcome, now = finished.claimed.job, finished.outcome, finished.finished_at
    await conn.execute(
        alert_attempts.update()
        .where(
            alert_attempts.c.delivery_id == job.delivery_id,
            alert_attempts.c.number == job.attempt,
        )
        .values(
            duration_ms=finished.duration_ms,
            outcome=outcome.result,
            status_code=outcome.status_code,
            error=outcome.error[:500],
            response=outcome.response[:2000],
        )
    )
    delivery = alert_deliveries.c
    mine = (delivery.id == job.delivery_id, delivery.attempts == job.attempt)
    done = {"lease_owner": None, "lease_until": None, "updated_at": now}
    if outcome.result == "sent":  # whoever holds the lease now: it was delivered
        await conn.execute(
            alert_deliveries.update()
            .where(delivery.id == job.delivery_id, delivery.status != "sent")
            .values(**done, status="sent", sent_at=now, last_error=outcome.error[:500])
        )
        return
    values: dict[str, object] = {**done, "last_error": outcome.error[:500]}
    if outcome.result == "retry":
        failures = finished.claimed.schedule_pos + 1
        delay = next_delay(
            rules.schedule, failures, jitter=rules.jitter, retry_after=outcome.retry_after,
            rand=rules.rand,
        )  # fmt: skip
        if delay is None:
            values["status"] = "failed"
        else:
            values.update(schedule_pos=failures, next_attempt_at=now + timedelta(seconds=delay))
    else:
        values["status"] = outcome.result  # failed | disabled
    await conn.execute(
        alert_deliveries.update().where(*mine, delivery.lease_owner == owner).values(**values)
    )
    if outcome.result == "disabled" and job.channel is not None and job.channel.enabled:
        await conn.execute(
            alert_channels.update()
            .where(alert_channels.c.id == job.channel.id)
            .values(enabled=False, disabled_reason=outcome.error[:500], updated_at=now)
        )


async def release_leases(db: Database, owner: str) -> int:
    """Hand back the leases a previous run under the same name held (it died with them)."""
    async with db.begin() as conn:
        result = await conn.execute(
            alert_deliveries.update()
            .where(alert_deliveries.c.lease_owner == owner, alert_deliveries.c.status == "pending")
            .values(lease_owner=None, lease_until=None)
        )
    return int(result.rowcount)


async def count_due(db: Database, now: datetime) -> int:
    query = (
        sa.select(sa.func.count())
        .select_from(alert_deliveries)
        .where(alert_deliveries.c.status == "pending", alert_deliveries.c.next_attempt_at <= now)
    )
    return int(await db.scalar(query) or 0)


async def purge_attempts(db: Database, before: datetime) -> int:
    """Delete attempts older than ``before`` of deliveries that are finished."""
    finished = sa.select(alert_deliveries.c.id).where(alert_deliveries.c.status != "pending")
    async with db.begin() as conn:
        result = await conn.execute(
            alert_attempts.delete().where(
                alert_attempts.c.started_at < before,
                alert_attempts.c.delivery_id.in_(finished),
            )
        )
    return int(result.rowcount)
