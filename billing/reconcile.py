"""Reconciliation: the ledger's used PV per bucket against Redis's ``used`` counters.

Redis is the authority at request time; the ledger learns usage from the stream.  A
gateway that died before its last flush leaves the ledger short, for good.  A pass reads
both sides twice, ``settle`` seconds apart (the stream having been drained in between),
and books a reconciliation row only for a bucket whose Redis counter did not move and
whose difference was the same both times — so usage still on its way (a live gateway
flushes every second) is never booked twice.  The same pass records what expired buckets
cancelled (docs/rules.md §1.1).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.db import Database
from billing.schema import expirations, gifts, packages, reconciliations, usage
from metering import BalanceStore
from metering.buckets import BucketStatus, from_ms

log = logging.getLogger("pvgate.reconcile")

DIFFERENCES = Counter(
    "pvgate_billing_reconciliation_differences_total",
    "Buckets whose ledger usage differed from Redis's used, booked by reconciliation.",
)
BOOKED_PV = Counter(
    "pvgate_billing_reconciliation_booked_pv_total",
    "PV booked by reconciliation rows (the size of each difference, whatever its sign).",
)


@dataclass(frozen=True, slots=True)
class Difference:
    enterprise_id: str
    bucket_id: str
    ledger_used: int
    redis_used: int

    @property
    def delta(self) -> int:
        return self.redis_used - self.ledger_used


async def ledger_used(conn: AsyncConnection, enterprise_id: str) -> dict[str, int]:
    """PV used per bucket in the ledger: usage from the stream plus reconciliation rows."""
    totals: dict[str, int] = {}
    for table, column in ((usage, usage.c.pv), (reconciliations, reconciliations.c.delta_pv)):
        result = await conn.execute(
            sa.select(table.c.bucket_id, sa.func.sum(column))
            .where(table.c.enterprise_id == enterprise_id)
            .group_by(table.c.bucket_id)
        )
        for bucket_id, pv in result:
            totals[bucket_id] = totals.get(bucket_id, 0) + int(pv)
    return totals


async def ledger_enterprises(conn: AsyncConnection) -> list[str]:
    query = sa.union(sa.select(packages.c.enterprise_id), sa.select(gifts.c.enterprise_id))
    return sorted((await conn.execute(query)).scalars())


async def differences(
    db: Database, store: BalanceStore, enterprise_ids: Iterable[str]
) -> tuple[dict[tuple[str, str], Difference], dict[tuple[str, str], int]]:
    """Per bucket where ledger and Redis disagree; and every bucket's Redis used."""
    found: dict[tuple[str, str], Difference] = {}
    redis_used: dict[tuple[str, str], int] = {}
    for enterprise_id in enterprise_ids:
        snapshot = await store.snapshot(enterprise_id)
        async with db.engine.connect() as conn:
            booked = await ledger_used(conn, enterprise_id)
        for bucket in snapshot.buckets:
            redis_used[(enterprise_id, bucket.id)] = bucket.used
            ledger = booked.get(bucket.id, 0)
            if ledger != bucket.used:
                found[(enterprise_id, bucket.id)] = Difference(
                    enterprise_id, bucket.id, ledger, bucket.used
                )
    return found, redis_used


async def reconcile(
    db: Database,
    store: BalanceStore,
    *,
    settle: float = 5.0,
    drain: Callable[[], Awaitable[int]] | None = None,
    settled: Callable[[], Awaitable[bool]] | None = None,
    enterprise_ids: Iterable[str] | None = None,
) -> list[Difference]:
    """One reconciliation pass; the differences it booked.

    With ``settled`` (the consumer's), nothing is booked while stream entries are still
    pending with some consumer: they will reach the ledger, and booking them now would
    count them twice.
    """
    if enterprise_ids is None:
        async with db.engine.connect() as conn:
            enterprise_ids = await ledger_enterprises(conn)
    ids = list(enterprise_ids)
    if drain is not None:
        await drain()
    first, used_first = await differences(db, store, ids)
    if not first:
        return []
    await asyncio.sleep(settle)
    if drain is not None:
        await drain()
    if settled is not None and not await settled():
        log.info("reconciliation skipped: usage entries still pending")
        return []
    second, used_second = await differences(db, store, ids)
    steady = [
        d
        for key, d in second.items()
        if first.get(key) == d and used_first.get(key) == used_second.get(key)
    ]
    await _book(db, steady)
    return steady


async def _book(db: Database, steady: list[Difference]) -> None:
    now = datetime.now(UTC)
    async with db.begin() as conn:
        for d in steady:
            await conn.execute(
                reconciliations.insert().values(
                    id=f"rec_{uuid.uuid4().hex}",
                    enterprise_id=d.enterprise_id,
                    bucket_id=d.bucket_id,
                    ledger_used=d.ledger_used,
                    redis_used=d.redis_used,
                    delta_pv=d.delta,
                    created_at=now,
                    reason=(
                        "usage never reached the ledger (a gateway stopped before flushing)"
                        if d.delta > 0
                        else "ledger ahead of Redis (PV given back unreported)"
                    ),
                )
            )
    for d in steady:  # counted once the rows are committed
        log.warning(
            "reconciliation booked %+d PV for %s/%s", d.delta, d.enterprise_id, d.bucket_id,
            extra={"enterprise": d.enterprise_id, "bucket": d.bucket_id, "delta_pv": d.delta},
        )  # fmt: skip
        DIFFERENCES.inc()
        BOOKED_PV.inc(abs(d.delta))


async def record_expirations(db: Database, store: BalanceStore, *, grace: timedelta) -> int:
    """Record what each bucket expired more than ``grace`` ago cancelled; rows written."""
    async with db.engine.connect() as conn:
        ids = await ledger_enterprises(conn)
        done = set((await conn.execute(sa.select(expirations.c.bucket_id))).scalars())
    written = 0
    for enterprise_id in ids:
        snapshot = await store.snapshot(enterprise_id)
        cutoff = snapshot.now - int(grace.total_seconds() * 1000)
        rows = [
            {
                "bucket_id": b.id,
                "enterprise_id": enterprise_id,
                "cancelled_pv": b.remaining,
                "expired_at": from_ms(b.expires_at),
                "recorded_at": datetime.now(UTC),
            }
            for b in snapshot.buckets
            if b.expires_at <= cutoff and b.id not in done and b.status is BucketStatus.ACTIVE
        ]
        if rows:
            async with db.begin() as conn:
                await conn.execute(expirations.insert(), rows)
            written += len(rows)
    return written
