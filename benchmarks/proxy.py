"""The data plane against nginx: nginx ``proxy_pass``, pvgate unmetered, pvgate metered.

Run from the repository root (needs ``wrk``; nginx for the reference, ``nginx-light``)::

    python -m benchmarks.proxy [--quick] [--json]

On 127.0.0.1, in a temporary directory, all stopped at the end (the method of
BENCHMARKS.md): an origin nginx of its own (``worker_processes 1``) serving a ~4 KB page;
the reference, a second nginx (``proxy_pass``, keep-alive upstream, HTTP/1.1); a private
Redis; pvgate ``metering = false`` and pvgate metered (enterprise ``bench`` credited far
more PV than the run can use), all in front of the same origin as the site ``bench.test``.
Each contender runs one worker, then two.  Load: ``wrk -t1 -c50`` per worker, every request
a page view (``Accept: text/html``, ``Sec-Fetch-Dest: document``); a warm-up, then
interleaved rounds with the order reversed each round (quick: 2 rounds of 4 s; full: 3 of
10 s).  A generated wrk script stops sending at the end of the window and lets the
answers in flight arrive, so wrk counts every page served; a metered run is valid only if
the PV debited equal the answers.  Then, with one worker, the metered and unmetered
gateways at half the metered maximum rate (paced by the script), for their latency.

Reported, per worker count: req/s and latency p50/p90/p99 (medians over the valid
rounds), CPU seconds per 10,000 requests of each contender's processes (from ``/proc``:
the figure least hurt by the noise of a shared machine), ``metered_ratio`` (metered /
unmetered) and ``nginx_ratio`` (metered / nginx); the paced p99s; the metered worker's
resident memory at rest.  Targets: ``nginx_ratio >= 0.5``, ``metered_ratio >= 0.95``,
metered p99 at half rate within 1 ms of unmetered's, worker RSS at rest <= 80 MB.  Without
nginx the origin is an aiohttp server and ``nginx_ratio`` is not reported (null), rather
than measured against something else.  ``--json``: the last line of stdout is one JSON
object; the Markdown report and its PNG chart go to ``benchmarks/out/``.  Exit 0 when
every run is valid, 1 if not, 2 without wrk.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path
from statistics import median
from typing import Any

from redis.asyncio import Redis

from benchmarks.proxy_parts import (
    ENTERPRISE,
    PERCENTILES,
    Run,
    Service,
    cpu_seconds,
    resident,
    run_wrk,
    start_contenders,
    start_origin,
    wait_ready,
    workers_of,
)
from benchmarks.proxy_report import write_report
from metering.build import build
from metering.store import BalanceStore
from pvgate.embedded import RedisServer
from tests.helpers import package

CONTENDERS = ("nginx", "unmetered", "metered")
TARGETS = {"nginx_ratio": 0.5, "metered_ratio": 0.95, "p99_delta_ms": 1.0, "rss_mb": 80.0}
OUT = Path(__file__).parent / "out"


async def one_run(store: BalanceStore, service: Service, seconds: int, n: int, **wrk: Any) -> Run:
    """A wrk run with the CPU its processes used; for the metered one the PV debited."""
    before = await store.snapshot(ENTERPRISE)
    cpu = cpu_seconds(service.process.pid)
    run = await run_wrk(service, seconds, n, **wrk)
    run.cpu_s = cpu_seconds(service.process.pid) - cpu
    if service.name == "metered":
        after = await store.snapshot(ENTERPRISE)
        run.pv_debited = sum(b.used for b in after.buckets) - sum(b.used for b in before.buckets)
    print(run.line(), flush=True)
    return run


async def rounds(
    store: BalanceStore, services: list[Service], config: dict[str, Any], workers: int
) -> list[Run]:
    """Warm-up, then the interleaved rounds: the counted runs."""
    connections = 50 * workers
    for service in services:
        await one_run(store, service, config["warmup"], 0, threads=workers, connections=connections)
    runs = []
    for n in range(1, config["rounds"] + 1):
        for service in services if n % 2 else services[::-1]:
            runs.append(
                await one_run(
                    store, service, config["seconds"], n, threads=workers, connections=connections
                )
            )
    return runs


def medians(runs: Sequence[Run]) -> dict[str, Any]:
    by: dict[str, Any] = {}
    for name in CONTENDERS:
        good = [r for r in runs if r.service == name and not r.problems()]
        if not good:
            by[name] = None
            continue
        requests = sum(r.requests for r in good)
        by[name] = {
            "rate": median(r.rate for r in good),
            "latency_ms": {p: median(r.latency_ms[p] for r in good) for p in PERCENTILES},
            "cpu_s_per_10k": sum(r.cpu_s for r in good) / requests * 10_000,
        }
    return by


def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
    return a["rate"] / b["rate"] if a and b and b["rate"] else None


async def measure(tmp: Path, redis: RedisServer, origin: Service, config: dict[str, Any]):
    client = Redis(host="127.0.0.1", port=redis.port, decode_responses=True)
    store = BalanceStore(client, timeout=10.0)
    await store.credit(ENTERPRISE, package("bench-pkg", 10**12))
    result: dict[str, Any] = {"workers": {}}
    all_runs: list[Run] = []
    try:
        for workers in (1, 2):
            with contextlib.ExitStack() as stack:
                services = start_contenders(stack, tmp, redis, origin, workers)
                for service in services:
                    await wait_ready(service)
                print(f"-- {workers} worker(s) each", flush=True)
                runs = await rounds(store, services, config, workers)
                all_runs += runs
                by = medians(runs)
                entry = {
                    **by,
                    "metered_ratio": ratio(by.get("metered"), by.get("unmetered")),
                    "nginx_ratio": ratio(by.get("metered"), by.get("nginx")),
                }
                if workers == 1:
                    entry.update(await paced(store, services, by, config))
                result["workers"][str(workers)] = entry
    finally:
        await client.aclose()
    return result, all_runs


async def paced(
    store: BalanceStore, services: list[Service], by: dict[str, Any], config: dict[str, Any]
) -> dict[str, Any]:
    """Metered and unmetered at half the metered maximum; the metered worker's RSS."""
    metered = next(s for s in services if s.name == "metered")
    pids = workers_of(metered.process.pid)
    await asyncio.sleep(1.0)
    rss = max((resident(pid) for pid in pids), default=0) / 2**20
    if not by.get("metered"):
        return {"paced": None, "worker_rss_mb": rss}
    rate = by["metered"]["rate"] / 2
    paced_p99: dict[str, float | None] = {}
    for service in (s for s in services if s.name in ("unmetered", "metered")):
        run = await one_run(store, service, config["seconds"], -1, rate=rate)
        paced_p99[service.name] = None if run.problems() else run.latency_ms["p99"]
    delta = None
    if paced_p99.get("metered") is not None and paced_p99.get("unmetered") is not None:
        delta = paced_p99["metered"] - paced_p99["unmetered"]  # type: ignore[operator]
    return {"paced": {"rate": rate, "p99_ms": paced_p99, "p99_delta_ms": delta},
            "worker_rss_mb": rss}  # fmt: skip


def verdicts(result: dict[str, Any]) -> dict[str, bool | None]:
    one = result["workers"].get("1", {})
    paced_delta = (one.get("paced") or {}).get("p99_delta_ms")
    checks = {
        "nginx_ratio": one.get("nginx_ratio"),
        "metered_ratio": one.get("metered_ratio"),
        "p99_delta_ms": paced_delta,
        "rss_mb": one.get("worker_rss_mb"),
    }
    out: dict[str, bool | None] = {}
    for name, value in checks.items():
        if value is None:
            out[name] = None
        elif name in ("p99_delta_ms", "rss_mb"):
            out[name] = value <= TARGETS[name]
        else:
            out[name] = value >= TARGETS[name]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.proxy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="2 rounds of 4 s, not 3 of 10 s")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk (Debian package wrk)", file=sys.stderr)
        return 2
    config = {"quick": args.quick, "seconds": 4 if args.quick else 10,
              "rounds": 2 if args.quick else 3, "warmup": 1 if args.quick else 2}  # fmt: skip
    result: dict[str, Any] = {"workers": {}}
    runs: list[Run] = []
    with (
        tempfile.TemporaryDirectory(prefix="pvgate-proxybench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        try:
            redis = stack.enter_context(RedisServer())
            origin = start_origin(stack, Path(tmp))
            asyncio.run(wait_ready(origin))
            rounds_of = f"{config['rounds']} rounds of {config['seconds']} s"
            print(f"proxy benchmark: origin {origin.name}, wrk -t1 -c50 per worker, {rounds_of}, "
                  f"engine {build()}")  # fmt: skip
            result, runs = asyncio.run(measure(Path(tmp), redis, origin, config))
            result["origin"] = origin.name
        except Exception:  # set-up failed: say why, stop everything, report invalid
            traceback.print_exc()
    if result.get("origin") != "nginx-origin":
        for entry in result["workers"].values():
            entry["nginx_ratio"] = None  # no nginx: nothing else stands in for it
    result.update(config=config, targets=TARGETS, met=verdicts(result), engine=build(),
                  valid=bool(runs) and not any(r.problems() for r in runs),
                  runs=[r.as_dict() for r in runs])  # fmt: skip
    report = write_report(result, OUT)
    print(f"report: {report}")
    if args.json:
        print(json.dumps(result))
    return 0 if result["valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
