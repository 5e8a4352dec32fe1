"""Instructions per page view of one gateway worker, unmetered and metered, by callgrind.

Run from the repository root (needs valgrind: Debian package ``valgrind``)::

    python -m benchmarks.instructions [--requests N] [--connections K] [--profile] [--json]
                                      [--keep DIR]

Throughput on a shared machine moves by a fifth from one run to the next; the count of
instructions a worker executes per request does not (valgrind's callgrind counts them the
same way whatever else the machine does).  So this is the figure to compare two builds
by, or the metered gateway with the unmetered one: kernel time (the sockets) is not in it,
only the worker's own work — the engine, the policy, the Meter, the interpreter, uvloop
and httptools.

On 127.0.0.1, in a temporary directory, all stopped at the end: the origin and the Redis
of ``benchmarks.proxy``; then each gateway (``metering = false``, then metered; one worker,
default settings) under ``valgrind --tool=callgrind``.  Once it is ready and warmed up
(N/5 requests), its counters are zeroed, N page views are sent over K keep-alive
connections (each waiting for its answer before the next; K = 50 by default, as the
throughput benchmark's wrk, so that the Meter's rounds carry as many page views as they do
there), and the counters dumped.
Reported: instructions per request of each, and ``metered_ratio`` (unmetered / metered
instructions: the share of the unmetered throughput the metered gateway keeps when the
worker's CPU is what bounds it).  Valid only if every answer was a 200 and the metered
run debited one PV per answer.  Exit 0 when valid, 1 if not, 2 without valgrind.
``--profile`` prints where the instructions went: by shared object (the interpreter,
uvloop, httptools, pvgate's compiled modules, ...) and by compiled function.

Under callgrind the worker runs some fifty times slower, but its time-driven work (the
loop-lag tick every 5 ms, the usage flush, the site check and the metrics flush every
second) does not slow down: per page view it costs fifty times what it does at full speed.
So the report also gives the share of that work (the callbacks of timers and the steps of
background tasks: a page view's own work runs in neither) and the ratio without it, the
closer estimate of the ratio at full speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from benchmarks.proxy_parts import (
    ENTERPRISE,
    HOST,
    Service,
    gateway,
    start_origin,
    wait_ready,
    workers_of,
)
from metering.build import build
from metering.store import BalanceStore
from pvgate.embedded import RedisServer
from tests.helpers import package

REQUEST = (f"GET / HTTP/1.1\r\nHost: {HOST}\r\nAccept: text/html\r\n"
           "Sec-Fetch-Dest: document\r\nUser-Agent: bench\r\n\r\n").encode()  # fmt: skip
READY_UNDER_VALGRIND_S = 600
# Time-driven work: the callbacks of the loop's timers (the loop-lag tick, the deadline
# check) and the steps of its background tasks (the usage flush, the site check, the
# metrics flush) — a page view's own work runs in neither (the engine uses no tasks).
PERIODIC = ("uv__run_timers", "task_step")


async def page_views(port: int, total: int, connections: int) -> Counter[int]:
    """``total`` page views over ``connections`` keep-alive connections: the statuses."""
    left, statuses = [total], Counter[int]()

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while left[0] > 0:
                left[0] -= 1
                writer.write(REQUEST)
                head = await reader.readuntil(b"\r\n\r\n")
                statuses[int(head[9:12])] += 1
                length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
                await reader.readexactly(int(length.group(1)) if length else 0)
        finally:
            writer.close()

    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(connections))), 900)
    return statuses


def worker_pid(service: Service) -> int:
    """The worker of a gateway run under valgrind (not the supervisor, nor its tracker)."""
    for pid in workers_of(service.process.pid):
        with contextlib.suppress(FileNotFoundError):
            if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                return pid
    raise RuntimeError(f"no worker found under the {service.name} gateway")


def last_dump(tmp: Path, pid: int) -> Path:
    """The worker's last callgrind dump."""
    return Path(sorted(glob.glob(f"{tmp}/callgrind.{pid}.out*"), key=os.path.getmtime)[-1])


def profile(dump: Path) -> tuple[Counter[str], Counter[str]]:
    """A callgrind dump's instructions by shared object (each function's own), and by
    function including its callees (a function's calls to itself left out)."""
    names: dict[str, dict[str, str]] = {"ob": {}, "fn": {}}
    objects, own, callees = Counter[str](), Counter[str](), Counter[str]()
    obj = fn = callee = ""
    call_line = False
    for line in dump.read_text(errors="replace").splitlines():
        kind, _, rest = line.partition("=")
        if kind in ("ob", "fn", "cfn", "cob"):
            key, _, name = rest.partition(" ")
            table = names["ob" if kind in ("ob", "cob") else "fn"]
            if name:
                table[key] = name
            value = table.get(key, key)
            if kind == "ob":
                obj = value
            elif kind == "fn":
                fn = value
            elif kind == "cfn":
                callee = value
            continue
        if kind == "calls":
            call_line = True
            continue
        parts = line.split()
        if len(parts) == 2 and (line[0].isdigit() or line[0] in "+-*"):
            cost = int(parts[1])
            if call_line:
                if callee != fn:
                    callees[fn] += cost
            else:
                objects[Path(obj).name or "?"] += cost
                own[fn] += cost
            call_line = False
    inclusive = Counter({name: own[name] + callees[name] for name in set(own) | set(callees)})
    return objects, inclusive


def print_profile(name: str, dump: Path, requests: int, top: int = 25) -> None:
    objects, inclusive = profile(dump)
    total = sum(objects.values())
    print(f"-- {name}: instructions per page view by shared object (own instructions)")
    for obj, cost in objects.most_common(8):
        print(f"{cost / requests:>10,.0f}  {cost / total:6.1%}  {obj}")
    print(f"-- {name}: pvgate's compiled functions, with what they call, per page view")
    ours = [(n, c) for n, c in inclusive.most_common() if n.startswith("CPyDef_")][:top]
    for fn, cost in ours:
        print(f"{cost / requests:>10,.0f}  {fn.removeprefix('CPyDef_').replace('___', '.')}")


def counted(dump: Path) -> int:
    """The instructions in a callgrind dump."""
    found = re.search(r"^(?:summary|totals): (\d+)", dump.read_text(), re.M)
    if found is None:
        raise RuntimeError(f"no total in {dump}")
    return int(found.group(1))


async def measure(
    tmp: Path, redis: RedisServer, origin: Service, name: str, requests: int, connections: int
) -> dict[str, Any]:
    client = Redis(host="127.0.0.1", port=redis.port, decode_responses=True)
    store = BalanceStore(client, timeout=10.0)
    site = {"host": HOST, "enterprise_id": ENTERPRISE, "status": "approved",
            "origin": f"http://127.0.0.1:{origin.port}"}  # fmt: skip
    settings = {"redis": {"url": redis.url}, "site": [site], "metering": name == "metered"}
    under = ["valgrind", "--tool=callgrind", "--trace-children=yes",
             "--trace-children-skip-by-arg=*resource_tracker*",
             f"--callgrind-out-file={tmp}/callgrind.%p.out"]  # fmt: skip
    try:
        with contextlib.ExitStack() as stack:
            service = gateway(stack, tmp, name, 1, settings, under=under)
            await wait_ready(service, READY_UNDER_VALGRIND_S)
            statuses = await page_views(service.port, max(requests // 5, 100), connections)
            pid = worker_pid(service)
            before = await store.snapshot(ENTERPRISE)
            await _callgrind_control("-z", pid)  # zero: count from here
            began = time.monotonic()
            statuses = await page_views(service.port, requests, connections)
            seconds = time.monotonic() - began
            await _callgrind_control("-d", pid)  # dump what was counted
            after = await store.snapshot(ENTERPRISE)
            dump = last_dump(tmp, pid)
            instructions = counted(dump)
            _, inclusive = profile(dump)
            periodic = sum(inclusive[name] for name in PERIODIC)
    finally:
        await client.aclose()
    debited = sum(b.used for b in after.buckets) - sum(b.used for b in before.buckets)
    problems = [f"{n} answers {status}" for status, n in statuses.items() if status != 200]
    if name == "metered" and debited != statuses[200]:
        problems.append(f"PV debited {debited} != 200 answers {statuses[200]}")
    return {"requests": requests, "instructions": instructions,
            "per_request": instructions / requests, "pv_debited": debited,
            "seconds": seconds, "periodic_per_request": periodic / requests,
            "problems": problems, "dump": str(dump)}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.instructions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--requests", type=int, default=3000, help="page views counted")
    parser.add_argument(
        "--connections",
        type=int,
        default=50,
        help="keep-alive connections (50: as benchmarks.proxy's wrk)",
    )
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument(
        "--profile", action="store_true", help="print where each worker's instructions went"
    )
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="copy each worker's callgrind dump to DIR (for callgrind_annotate)",
    )
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed: apt-get install valgrind", file=sys.stderr)
        return 2
    result: dict[str, Any] = {"engine": build(), "connections": args.connections}
    with (
        tempfile.TemporaryDirectory(prefix="pvgate-instructions-") as tmp,
        RedisServer() as redis,
        contextlib.ExitStack() as stack,
    ):
        origin = start_origin(stack, Path(tmp))
        asyncio.run(wait_ready(origin))
        asyncio.run(_credit(redis))
        for name in ("unmetered", "metered"):
            run = asyncio.run(measure(Path(tmp), redis, origin, name, args.requests,
                                      args.connections))  # fmt: skip
            result[name] = run
            dump = run.pop("dump")
            if args.profile:
                print_profile(name, Path(dump), args.requests)
            if args.keep is not None:
                args.keep.mkdir(parents=True, exist_ok=True)
                shutil.copy(dump, args.keep / f"callgrind.{name}.out")
            verdict = "INVALID: " + "; ".join(run["problems"]) if run["problems"] else "valid"
            print(f"{name:<10}{run['per_request']:>10,.0f} instructions per page view   "
                  f"({args.requests:,} over {args.connections} connections)   {verdict}\n"
                  f"{'':<10}{run['periodic_per_request']:>10,.0f} of them time-driven: timers "
                  f"and background tasks, over {run['seconds']:.1f} s",
                  flush=True)  # fmt: skip
    unmetered, metered = result["unmetered"]["per_request"], result["metered"]["per_request"]
    result["metered_ratio"] = unmetered / metered
    unmetered_busy = unmetered - result["unmetered"]["periodic_per_request"]
    metered_busy = metered - result["metered"]["periodic_per_request"]
    result["metered_ratio_without_periodic"] = unmetered_busy / metered_busy
    result["valid"] = not (result["unmetered"]["problems"] or result["metered"]["problems"])
    print(f"metered_ratio (unmetered / metered instructions): {result['metered_ratio']:.3f}; "
          f"without the time-driven work: {result['metered_ratio_without_periodic']:.3f}; "
          f"engine {result['engine']}")  # fmt: skip
    if args.json:
        print(json.dumps(result))
    return 0 if result["valid"] else 1


async def _callgrind_control(option: str, pid: int) -> None:
    process = await asyncio.create_subprocess_exec(
        "callgrind_control", option, str(pid), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    if await process.wait() != 0:
        raise RuntimeError(f"callgrind_control {option} {pid} failed")


async def _credit(redis: RedisServer) -> None:
    client = Redis(host="127.0.0.1", port=redis.port, decode_responses=True)
    try:
        await BalanceStore(client, timeout=10.0).credit(ENTERPRISE, package("bench-pkg", 10**12))
    finally:
        await client.aclose()


if __name__ == "__main__":
    sys.exit(main())
