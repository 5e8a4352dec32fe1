"""UsageRecorder: tells billing which bucket paid for each page view (docs/architecture.md §3).

`UsageRecorder.record` is synchronous and O(1) on the hot path: it adds n to a count per
``(enterprise_id, bucket_id)`` (the Meter calls it once per bucket and round of debits).
Every ``interval`` seconds a background task cuts those counts into entries and appends
them with XADD to the stream ``pvgate:usage`` (`metering.keys.USAGE_STREAM`).  Entry fields
(Redis stores every value as a string)::

    gateway_id  the recorder's id; must be unique per recorder lifetime, because seq
                restarts at 1 and billing would drop a reused (gateway_id, seq) as a repeat
    seq         1, 2, 3, ... one per entry of this recorder; (gateway_id, seq) is the
                idempotency key billing dedups on
    ts          the recorder's wall clock when the entry was cut, integer ms since the epoch
    rows        JSON list of [enterprise_id, bucket_id, n]: n is the non-zero net PV count
                since the previous cut, negative when more PV were given back than taken;
                at most 1,000 rows (a bigger cut becomes several entries, consecutive seqs)

Delivery is at least once and in seq order: an XADD that failed or timed out may still have
landed, so its entry keeps seq and rows and is retried, before any newer entry, on the next
flush.  Seq gaps appear only where the bounded buffer dropped entries while Redis was away
(``pvgate_usage_dropped_total``); Redis's per-bucket ``used`` counters stay authoritative
and billing's reconciliation books the difference.  The recorder never trims the stream:
billing does, once its consumers have acknowledged the entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Final, TypeAlias

import orjson
from redis import exceptions as redis_errors
from redis.typing import EncodableT, FieldT

from metering import scripts
from metering.keys import USAGE_STREAM
from metering.metrics import USAGE_DROPPED, USAGE_ENTRIES, USAGE_FLUSH_LAG
from metering.scripts import RedisClient

ROWS_PER_ENTRY: Final = 1_000

logger: Final = logging.getLogger("pvgate.usage")

Row: TypeAlias = tuple[str, str, int]


@dataclass(frozen=True, slots=True)
class _Entry:
    seq: int
    ts: int
    rows: list[Row]
    since: float  # monotonic time of the oldest record in it, for the lag gauge

    def fields(self, gateway_id: str) -> dict[FieldT, EncodableT]:
        return {
            "gateway_id": gateway_id,
            "seq": self.seq,
            "ts": self.ts,
            "rows": orjson.dumps(self.rows),
        }


class UsageRecorder:
    """Aggregates per-bucket PV counts and appends them to the usage stream.

    Works with `redis.asyncio.Redis` and `RedisCluster`: the stream is a single key.
    """

    def __init__(
        self,
        client: RedisClient,
        gateway_id: str,
        *,
        interval: float = 1.0,
        max_pending_rows: int = 100_000,
        timeout: float = 1.0,
    ) -> None:
        if not gateway_id:
            raise ValueError("gateway_id must not be empty")
        if interval <= 0 or timeout <= 0 or max_pending_rows < 1:
            raise ValueError("interval, timeout and max_pending_rows must be positive")
        self._client = client
        self._gateway_id = gateway_id
        self._interval = interval
        self._max_pending_rows = max_pending_rows
        self._timeout = timeout
        self._counts: dict[str, dict[str, int]] = {}  # enterprise → bucket → PV
        self._since: float | None = None
        self._pending: deque[_Entry] = deque()
        self._pending_rows = 0
        self._seq = 0
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    @property
    def pending_entries(self) -> int:
        """Entries already cut (seq assigned) that Redis has not acknowledged yet."""
        return len(self._pending)

    def record(self, enterprise_id: str, bucket_id: str, n: int = 1) -> None:
        """Count n PV of ``enterprise_id`` paid by ``bucket_id`` (negative: given back)."""
        buckets = self._counts.get(enterprise_id)
        if buckets is None:  # the first of this enterprise since the last cut
            buckets = self._counts[enterprise_id] = {}
            if self._since is None:
                self._since = time.monotonic()
        buckets[bucket_id] = buckets.get(bucket_id, 0) + n

    async def start(self) -> None:
        """Start the background task that flushes every ``interval`` seconds."""
        if self._task is not None:
            raise RuntimeError("UsageRecorder already started")
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name=f"pvgate-usage-{self._gateway_id}")

    async def aclose(self) -> None:
        """Stop the background task, then flush everything recorded.

        Pending entries get one more try; whatever Redis still refuses stays pending (and
        shows in the lag gauge) rather than raising.
        """
        task, self._task = self._task, None
        if task is not None:
            # An event rather than cancel(): a flush in progress finishes its XADD.
            self._stopping.set()
            await task
        await self.flush()

    async def flush(self) -> int:
        """Cut what was recorded into entries, send every pending one in seq order.

        Returns the number of entries written.  Redis errors are counted and logged, never
        raised: the failed entry and those after it wait for the next flush.
        """
        async with self._lock:
            self._cut()
            written = await self._send()
            self._trim()
            oldest = self._pending[0].since if self._pending else self._since
            USAGE_FLUSH_LAG.set(0.0 if oldest is None else time.monotonic() - oldest)
            return written

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._stopping.wait()
            if self._stopping.is_set():
                return  # aclose does the final flush
            try:
                await self.flush()
            except Exception:
                # The task must outlive any bug in one flush; the rows stay buffered.
                logger.exception("usage flush failed unexpectedly")

    def _cut(self) -> None:
        counts, self._counts = self._counts, {}
        since, self._since = self._since, None
        rows = [
            (enterprise, bucket, n)
            for enterprise, buckets in counts.items()
            for bucket, n in buckets.items()
            if n
        ]
        if since is None or not rows:
            return
        ts = int(time.time() * 1000)
        for start in range(0, len(rows), ROWS_PER_ENTRY):
            self._seq += 1
            chunk = rows[start : start + ROWS_PER_ENTRY]
            self._pending.append(_Entry(self._seq, ts, chunk, since))
            self._pending_rows += len(chunk)

    async def _send(self) -> int:
        written = 0
        while self._pending:
            entry = self._pending[0]
            try:
                async with asyncio.timeout(self._timeout):
                    await self._client.xadd(USAGE_STREAM, entry.fields(self._gateway_id))
            except (  # TimeoutError is an OSError; the cluster client's own is neither
                OSError,
                redis_errors.RedisError,
                redis_errors.RedisClusterException,
            ) as exc:
                error = scripts.translate(exc, f"usage entry seq {entry.seq}")
                # One warning per outage, not one a second while Redis stays away.
                log = logger.debug if self._failing else logger.warning
                log("%s; %d usage entries pending", error, len(self._pending))
                self._failing = True
                break
            self._pending.popleft()
            self._pending_rows -= len(entry.rows)
            written += 1
            USAGE_ENTRIES.inc()
            if self._failing:
                self._failing = False
                logger.info("usage stream writable again; %d entries pending", len(self._pending))
        return written

    def _trim(self) -> None:
        dropped_entries = dropped_pv = 0
        while self._pending_rows > self._max_pending_rows:
            entry = self._pending.popleft()
            self._pending_rows -= len(entry.rows)
            dropped_entries += 1
            dropped_pv += sum(abs(n) for _, _, n in entry.rows)
        if dropped_entries:
            USAGE_DROPPED.inc(dropped_pv)
            logger.error(
                "usage buffer full: dropped %d entries (%d PV); reconciliation will book them",
                dropped_entries,
                dropped_pv,
            )


__all__ = ["ROWS_PER_ENTRY", "UsageRecorder"]
