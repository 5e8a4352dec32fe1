"""The usage consumer: the ``pvgate:usage`` stream into the ledger, exactly once.

Gateways append entries ``{gateway_id, seq, ts, rows}`` (see `metering.usage`).  A
consumer group reads them; each read batch is written in ONE transaction together with
the ``(gateway_id, seq)`` keys of its entries, and acknowledged (XACK) only after the
commit.  So a consumer killed between read and commit leaves the entries pending (another
consumer, or itself after a restart, claims them with XAUTOCLAIM), and one killed between
commit and XACK sees them again and skips them by their keys: nothing is lost, nothing is
counted twice.  An entry that cannot be parsed, or that the database refuses
``max_deliveries`` times, goes to the dead-letter stream ``pvgate:usage:dead`` (capped by
`billing.retention` at ``[retention] dead_letters_max``) and is counted in a metric.

A database that cannot be reached refuses nothing: the batch stays pending and the
consumer waits; stale entries are claimed (and their deliveries counted towards the dead
letters) only while the database answers, so an outage, however long, dead-letters none.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson
import sqlalchemy as sa
from prometheus_client import Counter as MetricCounter
from prometheus_client import Gauge
from redis import exceptions as redis_errors
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.db import Database
from billing.schema import usage, usage_batches
from metering.keys import USAGE_STREAM, validate_bucket_id, validate_enterprise_id
from metering.scripts import RedisClient

log = logging.getLogger("pvgate.consumer")

DEAD_LETTER_STREAM = f"{USAGE_STREAM}:dead"
GROUP = "billing"

ENTRIES = MetricCounter(
    "pvgate_billing_usage_entries_total", "Usage entries consumed, by result.", ["result"]
)
DEAD_LETTERS = MetricCounter(
    "pvgate_billing_usage_dead_letters_total", "Usage entries moved to the dead-letter stream."
)
USAGE_LAG = Gauge(
    "pvgate_billing_usage_lag_seconds",
    "Age of the newest usage entry when it was written to the ledger.",
    multiprocess_mode="max",
)


# A gateway's count for one bucket in one flush; far below what a BIGINT column holds.
_MAX_COUNT = 2**40
_MAX_TS = 2**47  # ms: past the year 6000, and within what datetime can hold


@lru_cache(maxsize=65536)
def _valid_ids(enterprise_id: str, bucket_id: str) -> None:
    """The key-part rules of metering, checked once per pair seen (entries repeat them)."""
    validate_enterprise_id(enterprise_id)
    validate_bucket_id(bucket_id)


def _unreachable(exc: BaseException) -> bool:
    """The database could not be reached or dropped the connection (it refused nothing)."""
    return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError) or bool(
        getattr(exc, "connection_invalidated", False)
    )


class BadEntry(ValueError):
    """An entry that no retry can make valid."""


@dataclass(frozen=True, slots=True)
class Entry:
    stream_id: str
    gateway_id: str
    seq: int
    ts: int
    rows: tuple[tuple[str, str, int], ...]

    @classmethod
    def parse(cls, stream_id: str, fields: dict[str, str]) -> Entry:
        try:
            rows = tuple((str(e), str(b), int(n)) for e, b, n in orjson.loads(fields["rows"]))
            entry = cls(
                stream_id, str(fields["gateway_id"]), int(fields["seq"]), int(fields["ts"]), rows
            )
            for enterprise_id, bucket_id, n in rows:
                _valid_ids(enterprise_id, bucket_id)
                if not -_MAX_COUNT <= n <= _MAX_COUNT:
                    raise ValueError(f"row count {n} out of range")
        except (KeyError, ValueError, TypeError) as exc:
            raise BadEntry(f"entry {stream_id}: {type(exc).__name__}: {exc}") from exc
        if (
            not 0 < len(entry.gateway_id) <= 128
            or not 0 < entry.seq < 2**63
            or not 0 <= entry.ts < _MAX_TS
        ):
            raise BadEntry(f"entry {stream_id}: invalid gateway_id, seq or ts")
        return entry

    @property
    def hour(self) -> datetime:
        return datetime.fromtimestamp(self.ts / 1000, UTC).replace(
            minute=0, second=0, microsecond=0
        )


def upsert_usage(dialect: str) -> Any:
    """INSERT … ON CONFLICT adding to the hour's count: the same statement on both stores."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(usage)
    return stmt.on_conflict_do_update(
        index_elements=["enterprise_id", "bucket_id", "hour"],
        set_={"pv": usage.c.pv + stmt.excluded.pv},
    )


async def record_entries(conn: AsyncConnection, dialect: str, entries: Sequence[Entry]) -> int:
    """Write the entries not recorded yet, with their keys; the number written."""
    keys = [(e.gateway_id, e.seq) for e in entries]
    result = await conn.execute(
        sa.select(usage_batches.c.gateway_id, usage_batches.c.seq).where(
            sa.tuple_(usage_batches.c.gateway_id, usage_batches.c.seq).in_(keys)
        )
    )
    seen = {(gateway_id, seq) for gateway_id, seq in result}
    fresh = [e for e in entries if (e.gateway_id, e.seq) not in seen]
    # One batch can hold the same key twice (a redelivery next to its original).
    unique = list({(e.gateway_id, e.seq): e for e in fresh}.values())
    if not unique:
        return 0
    now = datetime.now(UTC)
    await conn.execute(
        usage_batches.insert(),
        [
            {
                "gateway_id": e.gateway_id,
                "seq": e.seq,
                "stream_id": e.stream_id,
                "rows": len(e.rows),
                "pv": sum(n for *_, n in e.rows),
                "recorded_at": now,
            }
            for e in unique
        ],
    )
    totals: Counter[tuple[str, str, datetime]] = Counter()
    for e in unique:
        hour = e.hour
        for enterprise_id, bucket_id, n in e.rows:
            totals[(enterprise_id, bucket_id, hour)] += n
    rows = [
        {"enterprise_id": k[0], "bucket_id": k[1], "hour": k[2], "pv": n}
        for k, n in totals.items()
        if n
    ]
    if rows:
        await conn.execute(upsert_usage(dialect), rows)
    return len(unique)


class UsageConsumer:
    """One member of the ``billing`` consumer group on ``pvgate:usage``."""

    def __init__(
        self,
        db: Database,
        client: RedisClient,
        name: str,
        *,
        count: int = 100,
        block_ms: int = 500,  # below the client socket timeout (1 s)
        claim_idle_ms: int = 30_000,
        max_deliveries: int = 5,
        on_batch: Callable[[set[str]], None] | None = None,
    ) -> None:
        self.db, self.client, self.name = db, client, name
        self.count, self.block_ms = count, block_ms
        self.claim_idle_ms, self.max_deliveries = claim_idle_ms, max_deliveries
        # Told, after each commit, the enterprises the batch touched (alerts evaluate them).
        self.on_batch = on_batch

    async def ensure_group(self) -> None:
        try:
            await self.client.xgroup_create(USAGE_STREAM, GROUP, id="0", mkstream=True)
        except redis_errors.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; Redis or database errors are logged and retried."""
        await self.ensure_group()
        while not stop.is_set():
            try:
                await self.step()
            except (redis_errors.RedisError, sa.exc.SQLAlchemyError, OSError) as exc:
                log.warning("usage consumer %s: %s; retrying", self.name, exc)
                await asyncio.sleep(1.0)
            except Exception:  # a bug must not stop usage from reaching the ledger
                log.exception("usage consumer %s failed a step; retrying", self.name)
                await asyncio.sleep(1.0)

    async def step(self, *, block: bool = True) -> int:
        """Claim stale entries, read new ones, record, acknowledge; entries recorded."""
        written = await self._claim_stale()
        reply: Any = await self.client.xreadgroup(
            GROUP,
            self.name,
            {USAGE_STREAM: ">"},
            count=self.count,
            block=self.block_ms if block else None,
        )
        for _stream, messages in reply or ():
            written += await self.process(messages)
        return written

    async def drain(self) -> int:
        """Consume until nothing new is left (for `pvgate reconcile` and tests)."""
        await self.ensure_group()
        total = 0
        while True:
            written = await self.step(block=False)
            total += written
            if not written and not await self._has_new():
                return total

    async def settled(self) -> bool:
        """True when every entry was read and acknowledged (none new, none pending)."""
        summary: Any = await self.client.xpending(USAGE_STREAM, GROUP)
        return not summary["pending"] and not await self._has_new()

    async def _has_new(self) -> bool:
        info = await self.client.xinfo_groups(USAGE_STREAM)
        group = next((g for g in info if g["name"] == GROUP), None)
        return bool(group and (group.get("lag") or 0) > 0)

    async def process(self, messages: Sequence[tuple[str, dict[str, str]]]) -> int:
        good: list[Entry] = []
        for stream_id, fields in messages:
            try:
                good.append(Entry.parse(stream_id, fields))
            except BadEntry as exc:
                await self._dead_letter(stream_id, fields, str(exc))
        if not good:
            return 0
        written = await self._record(good)
        if written is None and len(good) > 1:
            # One entry the database refuses must not hold back the others: record them
            # one by one, so that only the bad one stays pending towards the dead letters.
            results = [await self._record([entry]) for entry in good]
            return sum(r or 0 for r in results)
        return written or 0

    async def _record(self, entries: list[Entry]) -> int | None:
        """Record and acknowledge; None (entries left pending) when the database refused.

        Raises when the database could not be reached: nothing was refused, and `run`
        waits before it tries again."""
        connected = False
        try:
            async with self.db.begin() as conn:
                connected = True
                written = await record_entries(conn, self.db.dialect, entries)
        except (sa.exc.SQLAlchemyError, ArithmeticError) as exc:
            if not connected or _unreachable(exc):
                raise
            # Left pending: redelivered through XAUTOCLAIM, dead-lettered if it persists.
            ENTRIES.labels("failed").inc(len(entries))
            log.error("usage batch of %d entries not recorded: %s", len(entries), exc)
            return None
        await self.client.xack(USAGE_STREAM, GROUP, *(e.stream_id for e in entries))
        if self.on_batch is not None:
            self.on_batch({row[0] for e in entries for row in e.rows})
        ENTRIES.labels("recorded").inc(written)
        ENTRIES.labels("duplicate").inc(len(entries) - written)
        USAGE_LAG.set(max(0.0, time.time() - max(e.ts for e in entries) / 1000))
        return written

    async def _claim_stale(self) -> int:
        """Take over entries another consumer read but never acknowledged."""
        pending: Any = await self.client.xpending_range(
            USAGE_STREAM, GROUP, min="-", max="+", count=self.count, idle=self.claim_idle_ms
        )
        if not pending:
            return 0
        # Claiming counts a delivery: only while the database answers (it raises if not).
        async with self.db.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
        poisoned = [p["message_id"] for p in pending if p["times_delivered"] >= self.max_deliveries]
        for stream_id in poisoned:
            found: Any = await self.client.xrange(USAGE_STREAM, stream_id, stream_id)
            fields = found[0][1] if found else {}
            await self._dead_letter(stream_id, fields, f"failed {self.max_deliveries} deliveries")
        if len(pending) == len(poisoned):
            return 0
        _next, claimed, *_ = await self.client.xautoclaim(
            USAGE_STREAM, GROUP, self.name, self.claim_idle_ms, start_id="0-0", count=self.count
        )
        if claimed:
            log.info("consumer %s took over %d stale usage entries", self.name, len(claimed))
        return await self.process([m for m in claimed if m and m[1]])

    async def _dead_letter(self, stream_id: str, fields: dict[str, str], why: str) -> None:
        letter: dict[Any, Any] = {**fields, "source_id": stream_id, "error": why[:500]}
        await self.client.xadd(DEAD_LETTER_STREAM, letter)
        await self.client.xack(USAGE_STREAM, GROUP, stream_id)
        DEAD_LETTERS.inc()
        log.error("usage entry %s dead-lettered: %s", stream_id, why)
