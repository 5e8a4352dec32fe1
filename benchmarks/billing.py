"""Usage ingest throughput of billing: the usage consumer against plain inserts.

Run from the repository root::

    python -m benchmarks.billing [--quick] [--json] [--postgres URL]

The benchmark generates N usage entries as gateways write them (`metering.usage`): 100
rows each (quick: 300 entries = 30,000 rows, full: 2,000 = 200,000), from 4 gateways
(consecutive ``seq`` per gateway), ``ts`` spread over one hour, every entry 100 distinct
(enterprise, bucket) pairs drawn from 300 enterprises x 4 buckets with a random PV count,
so an entry's rows are unique as `UsageRecorder` makes them.  Two scenarios then load the
same rows into a fresh, migrated ledger each (its connection opened before the clock):

``consumer``
    the entries are XADDed to ``pvgate:usage`` of a private ``redis-server`` (127.0.0.1,
    timed apart, not counted), then one `UsageConsumer` (default ``count`` = 100 entries
    a read) loops ``step(block=False)`` until it has written all of them: XREADGROUP,
    parse, one transaction per read batch with the idempotency keys (`usage_batches`)
    and the upsert of the hourly totals into `usage`, then XACK;
``baseline``
    no Redis: one transaction per entry holding ONE executemany of a plain INSERT of the
    entry's rows into `usage`, no idempotency bookkeeping, no upsert.  `usage` is keyed
    (enterprise_id, bucket_id, hour), so to keep every insert conflict-free entry i is
    written at hour H + i hours (H the hour of the generated ``ts``): rows are unique
    within an entry by construction and entries never share an hour.

Rate = generated rows / seconds.  The consumer sums the rows of one (enterprise, bucket,
hour) within a read batch before its upsert: with these keys and one hour, each batch of
10,000 rows becomes at most 1,200 upserts, while the baseline writes every row.

Each scenario runs once per round, 3 rounds, the order swapped each round, on SQLite (a
file in a temporary directory), and on PostgreSQL too when ``--postgres URL`` or
``PVGATE_TEST_POSTGRES_URL`` names a server: each ledger is then a database
``pvgate_bench_<hex>`` created for it and dropped WITH (FORCE) after.

A run is valid only if the ledger's SUM(pv) per (enterprise, bucket) equals the generated
totals; for the consumer also `usage_batches` holds exactly N rows, the group has no pending
entry and no lag, and nothing was dead-lettered.  Reported per database: the median rows/s
of the valid runs and ``ingest_ratio = consumer / baseline`` (target >= 0.5).  ``--json``:
the last line of stdout is one JSON object.  Exit 0 when every run is valid, else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import median
from typing import Any

import orjson
import sqlalchemy as sa
from redis.asyncio import Redis

from benchmarks.common import event_loop
from billing.consumer import DEAD_LETTER_STREAM, GROUP, UsageConsumer
from billing.db import Database, scratch_database
from billing.schema import usage, usage_batches
from metering.keys import USAGE_STREAM
from pvgate.embedded import RedisServer

ROWS_PER_ENTRY = 100
ENTERPRISES, BUCKETS, GATEWAYS = 300, 4, 4
HOUR = datetime(2024, 6, 1, 10, tzinfo=UTC)
XADD_CHUNK = 200  # entries per pipeline when filling the stream
TARGET = 0.5
SEED = 20240601
POSTGRES_ENV = "PVGATE_TEST_POSTGRES_URL"
SCENARIO_TIMEOUT = 600.0  # a stuck run fails instead of hanging

Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Config:
    quick: bool
    entries: int
    rounds: int


@dataclass(frozen=True, slots=True)
class GenEntry:
    gateway_id: str
    seq: int
    ts: int
    rows: list[tuple[str, str, int]]


@dataclass(frozen=True, slots=True)
class Workload:
    entries: list[GenEntry]
    totals: Counter[Key]

    @property
    def rows(self) -> int:
        return sum(len(e.rows) for e in self.entries)


@dataclass(slots=True)
class Run:
    database: str
    scenario: str
    round: int
    rows: int = 0
    seconds: float = 0.0
    xadd_seconds: float | None = None  # consumer: filling the stream, not counted
    problems: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def generate(n: int) -> Workload:
    rng = random.Random(SEED)
    pairs = [
        (f"ent-{e:04d}", f"pkg-{e:04d}-{b}") for e in range(ENTERPRISES) for b in range(BUCKETS)
    ]
    start = int(HOUR.timestamp() * 1000)
    entries, totals = [], Counter[Key]()
    for i in range(n):
        rows = [
            (e, b, max(1, int(rng.expovariate(1 / 25))))
            for e, b in rng.sample(pairs, ROWS_PER_ENTRY)
        ]
        for e, b, pv in rows:
            totals[(e, b)] += pv
        ts = start + i * 3_599_000 // n
        entries.append(GenEntry(f"gw-{i % GATEWAYS}", i // GATEWAYS + 1, ts, rows))
    return Workload(entries, totals)


@asynccontextmanager
async def fresh_ledger(tmp: Path, pg_url: str | None, label: str) -> AsyncIterator[Database]:
    """A migrated, empty ledger: a SQLite file in ``tmp``, or a new PostgreSQL database."""
    if pg_url is None:
        db = Database(f"sqlite:///{tmp}/{label}.db")
        try:
            await db.migrate()
            yield db
        finally:
            await db.dispose()
        return
    async with scratch_database(pg_url, "pvgate_bench") as db:
        await db.migrate()
        yield db


async def fill_stream(redis: Redis, work: Workload) -> float:
    """An empty Redis, then every entry XADDed in order: the seconds it took."""
    await redis.flushall()
    started = time.perf_counter()
    for first in range(0, len(work.entries), XADD_CHUNK):
        async with redis.pipeline(transaction=False) as pipe:
            for e in work.entries[first : first + XADD_CHUNK]:
                fields: dict[Any, Any] = {
                    "gateway_id": e.gateway_id,
                    "seq": e.seq,
                    "ts": e.ts,
                    "rows": orjson.dumps(e.rows),
                }
                pipe.xadd(USAGE_STREAM, fields)
            await pipe.execute()
    return time.perf_counter() - started


async def consume(db: Database, redis: Redis, work: Workload, run: Run) -> None:
    run.xadd_seconds = await fill_stream(redis, work)
    consumer = UsageConsumer(db, redis, "bench")
    await consumer.ensure_group()
    started = time.perf_counter()
    written = 0
    while written < len(work.entries):
        step = await consumer.step(block=False)
        if not step:  # a failed batch is left pending; the checks below tell
            break
        written += step
    run.seconds = time.perf_counter() - started


async def insert_plain(db: Database, work: Workload, run: Run) -> None:
    statement = usage.insert()
    started = time.perf_counter()
    for i, entry in enumerate(work.entries):
        hour = HOUR + timedelta(hours=i)
        async with db.begin() as conn:
            await conn.execute(
                statement,
                [
                    {"enterprise_id": e, "bucket_id": b, "hour": hour, "pv": pv}
                    for e, b, pv in entry.rows
                ],
            )
    run.seconds = time.perf_counter() - started


async def ledger_problems(db: Database, work: Workload) -> list[str]:
    """Differences between the ledger's SUM(pv) per (enterprise, bucket) and the totals."""
    query = sa.select(usage.c.enterprise_id, usage.c.bucket_id, sa.func.sum(usage.c.pv))
    async with db.begin() as conn:
        found = (await conn.execute(query.group_by(usage.c.enterprise_id, usage.c.bucket_id))).all()
    ledger = {(str(e), str(b)): int(pv) for e, b, pv in found}
    wrong = [k for k in ledger.keys() | work.totals.keys() if ledger.get(k) != work.totals.get(k)]
    if not wrong:
        return []
    return [
        f"SUM(pv) differs for {len(wrong)} of {len(work.totals)} (enterprise, bucket) pairs: "
        f"ledger {sum(ledger.values()):,} PV vs generated {work.totals.total():,}"
    ]


async def consumer_problems(db: Database, redis: Redis, work: Workload) -> list[str]:
    found = []
    batches = await db.scalar(sa.select(sa.func.count()).select_from(usage_batches))
    if batches != len(work.entries):
        found.append(f"usage_batches holds {batches} rows, not {len(work.entries)}")
    pending = int((await redis.xpending(USAGE_STREAM, GROUP))["pending"])
    groups: Any = await redis.xinfo_groups(USAGE_STREAM)
    group: Any = next((g for g in groups if g["name"] == GROUP), {})
    lag = group.get("lag")
    if lag is None and group:  # Redis < 7 reports no lag: compare the last ids instead
        stream: Any = await redis.xinfo_stream(USAGE_STREAM)
        lag = 0 if group["last-delivered-id"] == stream["last-generated-id"] else "some"
    dead = await redis.xlen(DEAD_LETTER_STREAM)
    if pending or lag != 0 or dead:
        found.append(f"group {GROUP}: {pending} pending, lag {lag}, {dead} dead-lettered")
    return found


async def one_run(tmp: Path, pg_url: str | None, redis: Redis, work: Workload, run: Run) -> None:
    """One scenario on a fresh ledger: timed, then checked; failures become problems."""
    label = f"{run.scenario}-{run.round}"
    try:
        async with fresh_ledger(tmp, pg_url, label) as db, asyncio.timeout(SCENARIO_TIMEOUT):
            if await db.scalar(sa.select(sa.func.count()).select_from(usage)):  # opens a conn
                raise RuntimeError("the fresh ledger is not empty")
            if run.scenario == "consumer":
                await consume(db, redis, work, run)
                run.problems += await consumer_problems(db, redis, work)
            else:
                await insert_plain(db, work, run)
            run.problems += await ledger_problems(db, work)
        run.rows = work.rows
    except Exception as exc:  # set-up, run or check failed: report it, go on
        traceback.print_exc()
        run.problems.append(f"{type(exc).__name__}: {exc}")


async def run_all(
    work: Workload, config: Config, databases: dict[str, str | None], redis_port: int
) -> list[Run]:
    runs: list[Run] = []
    redis = Redis(host="127.0.0.1", port=redis_port, decode_responses=True)
    try:
        with tempfile.TemporaryDirectory(prefix="pvgate-billingbench-") as tmp:
            for database, pg_url in databases.items():
                for n in range(1, config.rounds + 1):
                    order = ("consumer", "baseline") if n % 2 else ("baseline", "consumer")
                    for scenario in order:
                        run = Run(database, scenario, n)
                        await one_run(Path(tmp), pg_url, redis, work, run)
                        print(line(run), flush=True)
                        runs.append(run)
    finally:
        await redis.aclose()
    return runs


def line(run: Run) -> str:
    verdict = f"INVALID: {'; '.join(run.problems)}" if run.problems else "valid"
    xadd = "" if run.xadd_seconds is None else f"   (XADD {run.xadd_seconds:.2f} s, not counted)"
    return (
        f"{run.database:<11}{run.scenario:<9}round {run.round}{run.rate:>12,.0f} rows/s"
        f"   {run.rows:,} rows in {run.seconds:.3f} s{xadd}   {verdict}"
    )


def per_database(runs: Sequence[Run]) -> dict[str, Any]:
    rates: dict[str, float | None] = {}
    for scenario in ("consumer", "baseline"):
        good = [r.rate for r in runs if r.scenario == scenario and not r.problems]
        rates[scenario] = median(good) if good else None
    valid = bool(runs) and not any(r.problems for r in runs)
    consumer, baseline = rates["consumer"], rates["baseline"]
    ratio = consumer / baseline if valid and consumer and baseline else None
    return {
        **rates,
        "ingest_ratio": ratio,
        "target_met": ratio is not None and ratio >= TARGET,
        "valid": valid,
    }


def summary(runs: Sequence[Run], config: Config, databases: Sequence[str]) -> dict[str, Any]:
    result: dict[str, Any] = {
        db: per_database([r for r in runs if r.database == db]) for db in databases
    }
    result.update(
        ingest_ratio=result["sqlite"]["ingest_ratio"],
        target=TARGET,
        valid=all(result[db]["valid"] for db in databases),
        **asdict(config),
        rows_per_entry=ROWS_PER_ENTRY,
        rows=config.entries * ROWS_PER_ENTRY,
        enterprises=ENTERPRISES,
        buckets_per_enterprise=BUCKETS,
        runs=[{**asdict(r), "rows_per_s": r.rate, "valid": not r.problems} for r in runs],
    )
    return result


def print_summary(result: dict[str, Any], databases: Sequence[str]) -> None:
    for db in databases:
        part = result[db]
        rates = "   ".join(
            f"{s} {part[s]:,.0f}" if part[s] else f"{s} no valid run"
            for s in ("consumer", "baseline")
        )
        ratio = "invalid" if part["ingest_ratio"] is None else f"{part['ingest_ratio']:.2f}"
        met = "met" if part["target_met"] else "NOT met"
        print(f"{db:<11}rows/s {rates}   ingest_ratio = {ratio}   target >= {TARGET:g}   {met}")
    print("all runs valid" if result["valid"] else "INVALID: see the runs above")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.billing",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="300 entries, not 2,000")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument(
        "--postgres",
        metavar="URL",
        default=os.environ.get(POSTGRES_ENV) or None,
        help=f"also run on this PostgreSQL server (default: ${POSTGRES_ENV})",
    )
    args = parser.parse_args(argv)
    config = Config(args.quick, 300 if args.quick else 2_000, 3)
    databases: dict[str, str | None] = {"sqlite": None}
    if args.postgres:
        databases["postgresql"] = args.postgres
    work = generate(config.entries)
    factory, loop = event_loop()
    print(
        f"billing benchmark: {config.entries:,} entries x {ROWS_PER_ENTRY} rows = "
        f"{work.rows:,} rows, {config.rounds} rounds, {', '.join(databases)}, {loop}",
        flush=True,
    )
    runs: list[Run] = []
    try:
        with RedisServer() as server, asyncio.Runner(loop_factory=factory) as runner:
            runs = runner.run(run_all(work, config, databases, server.port))
    except Exception:  # Redis did not start: report invalid
        traceback.print_exc()
    result = summary(runs, config, list(databases))
    print_summary(result, list(databases))
    if args.json:
        print(json.dumps(result))
    return 0 if result["valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
