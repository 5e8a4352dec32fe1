"""Soak: sustained page views for some minutes; does anything grow that should not?

Run from the repository root (opt-in; minutes, not seconds)::

    python -m benchmarks.soak [--minutes 5] [--every 30] [--json]

It starts a private ``redis-server``, an origin and ``pvgate run`` (billing and one
gateway worker) with default settings but for ports and a SQLite ledger, onboards one
enterprise through the admin API with a gift far larger than the run can use, and keeps
page views flowing — wrk where it is installed (``-t1 -c16``), else 16 aiohttp clients —
for ``--minutes``.  Every ``--every`` seconds it samples Redis ``used_memory``, the length
of the usage stream and of the dead-letter stream, and the row count of every ledger
table.

The verdict, once the run is over:

- **streams bounded**: the usage stream never holds more than two retention intervals of
  flushes (each worker appends about one entry a second), the dead letters stay empty;
- **Redis flat**: ``used_memory`` in the second half of the run is within 10 % (or
  1 MiB) of its first-half maximum;
- **ledger flat apart from the business rows**: no table grows but the business rows
  (``usage``: one row per bucket and hour) and the tables that retention purges by age
  (``usage_batches``, one row per usage entry booked, kept 7 days); for those the run
  reports the growth rate and the size it levels off at after their retention age; the
  page views show up in the ledger in full after the run.

Exit status 0 when the run completed, whatever the verdict; ``--json`` ends with one JSON
object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from billing.schema import metadata
from pvgate.embedded import RedisServer
from tests.e2e.harness import HTML_HEADERS, Origin
from tests.e2e.stack import Stack, start_stack

ENTERPRISE, HOST = "soak-shop", "soak.bench"
CLIENTS = 16
# Purged by age (billing/retention.py): table -> the default retention, in seconds.
AGED = {
    "usage_batches": 7 * 86_400.0,
    "idempotency_records": 86_400.0,
    "wecom_events": 30 * 86_400.0,
    "wecom_event_keys": 30 * 86_400.0,
    "alert_attempts": 30 * 86_400.0,
}
BUSINESS = {
    "enterprises", "orders", "payments", "packages", "gifts", "refunds", "usage",
    "reconciliations", "expirations", "audit_log", "tokens", "sites", "adjustments",
}  # fmt: skip


@dataclass(slots=True)
class Sample:
    t: float
    views: int
    used_memory: int
    usage_stream: int
    dead_letters: int
    rows: dict[str, int] = field(default_factory=dict)


async def drive(url: str, until: float, counted: list[int]) -> None:
    """Page views until ``until``: wrk if installed, else aiohttp clients."""
    if shutil.which("wrk"):
        args = [f"-H{k}: {v}" for k, v in [*HTML_HEADERS.items(), ("Host", HOST)]]
        seconds = max(1, int(until - time.monotonic()))
        process = await asyncio.create_subprocess_exec(
            "wrk", "-t1", f"-c{CLIENTS}", f"-d{seconds}s", *args, f"{url}/",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await process.communicate()
        for line in out.decode().splitlines():
            if "requests in" in line:
                counted[0] = int(line.split()[0])
        return
    headers = {**HTML_HEADERS, "Host": HOST}
    async with aiohttp.ClientSession() as session:

        async def one() -> None:
            while time.monotonic() < until:
                async with session.get(f"{url}/", headers=headers) as resp:
                    await resp.read()
                    counted[0] += resp.status == 200

        await asyncio.gather(*(one() for _ in range(CLIENTS)))


def row_counts(ledger: Path) -> dict[str, int]:
    with sqlite3.connect(ledger) as conn:
        return {
            t.name: conn.execute(f'SELECT count(*) FROM "{t.name}"').fetchone()[0]
            for t in metadata.sorted_tables
        }


async def sample(redis: Redis, ledger: Path, started: float, views: int) -> Sample:
    info = await redis.info("memory")
    return Sample(
        round(time.monotonic() - started, 1),
        views,
        int(info["used_memory"]),
        int(await redis.xlen("pvgate:usage")),
        int(await redis.xlen("pvgate:usage:dead")),
        await asyncio.to_thread(row_counts, ledger),
    )


def verdict(samples: Sequence[Sample], retention_s: float) -> dict[str, Any]:
    half = len(samples) // 2
    first, second = samples[:half] or samples, samples[half:]
    memory_cap = max(s.used_memory for s in first)
    memory_ok = max(s.used_memory for s in second) <= max(memory_cap * 1.1, memory_cap + 2**20)
    stream_cap = 2 * retention_s + 10
    stream_ok = max(s.usage_stream for s in samples) <= stream_cap
    dead_ok = all(s.dead_letters == 0 for s in samples)
    growing = sorted(
        name
        for name in samples[0].rows
        if name not in BUSINESS | AGED.keys() and samples[-1].rows[name] > first[-1].rows[name]
    )
    span = samples[-1].t - samples[0].t
    aged = {
        name: {
            "rows_per_s": round(rate, 2),
            "retention_s": keep,
            "levels_off_at": round(rate * keep),
        }
        for name, keep in AGED.items()
        if name in samples[0].rows
        and (rate := (samples[-1].rows[name] - samples[0].rows[name]) / max(span, 1.0)) > 0
    }
    return {
        "redis_flat": memory_ok,
        "usage_stream_bounded": stream_ok,
        "usage_stream_cap": stream_cap,
        "dead_letters_empty": dead_ok,
        "non_business_tables_growing": growing,
        "purged_by_age": aged,
        "flat": memory_ok and stream_ok and dead_ok and not growing,
    }


def show(s: Sample, changing: Sequence[str]) -> str:
    rows = "  ".join(f"{name} {s.rows[name]:,}" for name in changing)
    return (
        f"{s.t:>7.1f} s  views {s.views:>10,}  used_memory {s.used_memory / 2**20:7.2f} MiB"
        f"  usage stream {s.usage_stream:>5}  dead {s.dead_letters:>3}  {rows}"
    )


async def soak(minutes: float, every: float) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="pvgate-soak-"))
    server = RedisServer().start()
    origin = await Origin().start()
    stack: Stack = start_stack(tmp, server, workers=1)
    redis = Redis(host=server.host, port=server.port, decode_responses=True)
    samples: list[Sample] = []
    try:
        await stack.gateway.wait_ready()
        await stack.wait_billing()
        await stack.onboard(ENTERPRISE, HOST, origin, 100_000_000)
        await asyncio.sleep(1.5)  # the site reaches the worker
        retention_s = 60.0  # the default retention.interval_s
        started = time.monotonic()
        until = started + minutes * 60
        counted = [0]
        driving = asyncio.create_task(drive(stack.gateway.url, until, counted))
        while time.monotonic() < until:
            used = sum((await stack.redis_used(ENTERPRISE)).values())
            samples.append(await sample(redis, tmp / "ledger.db", started, used))
            changing = [n for n in samples[0].rows if samples[-1].rows[n] or samples[0].rows[n]]
            print(show(samples[-1], changing), flush=True)
            await asyncio.sleep(min(every, max(0.0, until - time.monotonic())))
        await driving
        ledger = await stack.wait_ledger(ENTERPRISE, within=60)
        used = sum((await stack.redis_used(ENTERPRISE)).values())
        samples.append(await sample(redis, tmp / "ledger.db", started, used))
        print(show(samples[-1], [n for n in samples[-1].rows if samples[-1].rows[n]]))
    finally:
        stack.stop()
        await redis.aclose()
        await origin.stop()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    result = verdict(samples, retention_s)
    result.update(
        minutes=minutes,
        page_views=used,
        ledger_booked=sum(ledger.values()),
        load="wrk" if shutil.which("wrk") else "aiohttp",
        samples=[asdict(s) for s in samples],
    )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--every", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args(argv)
    result = asyncio.run(soak(args.minutes, args.every))
    for key in ("redis_flat", "usage_stream_bounded", "dead_letters_empty"):
        print(f"{key:<22} {'yes' if result[key] else 'NO'}")
    growing = result["non_business_tables_growing"]
    print(f"{'other tables growing':<22} {', '.join(growing) or 'none'}")
    for name, aged in result["purged_by_age"].items():
        print(
            f"{name:<22} +{aged['rows_per_s']} rows/s, kept {aged['retention_s'] / 86_400:g} "
            f"days: levels off at about {aged['levels_off_at']:,} rows"
        )
    print(f"page views {result['page_views']:,}, booked in the ledger {result['ledger_booked']:,}")
    print("flat" if result["flat"] else "NOT FLAT: see above")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
