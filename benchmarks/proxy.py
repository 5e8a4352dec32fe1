"""What metering costs a proxied page view: the gateway with and without metering, under wrk.

Run from the repository root (needs ``wrk``: ``apt-get install wrk``)::

    python -m benchmarks.proxy [--quick] [--json]

On 127.0.0.1, in a temporary directory, all stopped at the end: a private Redis, an
origin serving a ~2 KB HTML page (nginx if on PATH, else aiohttp in its own process), and
two ``pvgate gateway`` processes, one worker each, with the site ``bench.test`` in front
of it: ``metered`` (enterprise ``bench`` credited far more PV than the run can use) and
``unmetered`` (``metering = false``: a plain proxy).

Every request is a page view (``GET /``, ``Accept: text/html``, ``Sec-Fetch-Dest:
document``), debited one PV by the metered gateway.  After a warm-up, the two are driven
alternately, the order swapped every round (quick: 2 rounds of 4 s, full: 3 of 15 s), by
``wrk -t2 -c64`` with a generated Lua script.  The script stops sending at
the end of the window and lets the requests in flight finish before wrk exits, so wrk
counts every page served (wrk's own ``-d`` cut-off drops up to one answer per connection
that the gateway had served and debited); its ``done()`` prints JSON: requests, socket
errors, timeouts, non-2xx answers (status >= 400 for wrk; the origin never redirects),
latency percentiles.  A run is valid without any such error, and for the metered gateway
only if the PV debited during it (``used`` of the enterprise's buckets, by
`BalanceStore.snapshot` before and after) equals the answers wrk counted.

Reported: medians over the valid runs of requests/s and latency p50/p90/p99, and
``metered_ratio = metered / unmetered`` (target >= 0.9).  ``--json``: the last line of
stdout is one JSON object.  Exit 0 when every run is valid, 1 if not, 2 without wrk.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

import aiohttp
import tomli_w
from aiohttp import web
from redis.asyncio import Redis

from metering.store import BalanceStore
from pvgate.embedded import RedisServer, free_port
from tests.helpers import package

THREADS, CONNECTIONS = 2, 64
DRAIN_S = 1  # whole seconds after the window for the answers in flight to arrive
HOST, ENTERPRISE = "bench.test", "bench"
TARGET = 0.9
READY_S = 30
MARK = "PVBENCH "
PERCENTILES = ("p50", "p90", "p99")
# ~2 KB, and nothing nginx would read as a quote, an escape or a variable.
PAGE = "<!doctype html><html><head><title>bench</title></head><body>{}</body></html>".format(
    "".join(f"<p>Paragraph {i}: a landing page, served as is by the origin.</p>" for i in range(30))
)
NGINX_CONF = """daemon off; worker_processes 1; pid {t}/nginx.pid; error_log {t}/nginx.err;
events {{ worker_connections 1024; }}
http {{ access_log off; keepalive_requests 1000000; client_body_temp_path {t}/body;
  proxy_temp_path {t}/proxy; fastcgi_temp_path {t}/fcgi; uwsgi_temp_path {t}/uwsgi;
  scgi_temp_path {t}/scgi;
  server {{ listen 127.0.0.1:{port};
    location / {{ default_type text/html; return 200 '{page}'; }} }} }}
"""
# wrk runs LuaJIT: gettimeofday through its FFI, as plain Lua only tells whole seconds.
WRK_LUA = """local ffi = require("ffi")
ffi.cdef("typedef struct { long s; long us; } pvb_tv; int gettimeofday(pvb_tv *tv, void *tz);")
local tv = ffi.new("pvb_tv")
local function now() ffi.C.gettimeofday(tv, nil); return tonumber(tv.s) + tonumber(tv.us) / 1e6 end
wrk.method, wrk.path = "GET", "/"
local h = wrk.headers
h["Host"], h["Accept"], h["Sec-Fetch-Dest"] = "%(host)s", "text/html", "document"
local threads = {}; stop_at, first = 0, 0
function setup(thread) table.insert(threads, thread) end
function init(args) stop_at = tonumber(args[1]) end
-- Before every request; past the window the connection stays idle until wrk exits.
function delay()
  local t = now()
  if first == 0 then first = t end
  return t >= stop_at and 3600000 or 0
end
function done(summary, latency)
  local started = 0
  for _, thread in ipairs(threads) do
    local t = thread:get("first")
    if t > 0 and (started == 0 or t < started) then started = t end
  end
  local e = summary.errors
  io.write(string.format(
    '%(mark)s{"requests":%%d,"started":%%.6f,"connect":%%d,"read":%%d,"write":%%d,' ..
    '"status":%%d,"timeout":%%d,"p50":%%.1f,"p90":%%.1f,"p99":%%.1f}\\n',
    summary.requests, started, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""


@dataclass(frozen=True, slots=True)
class Config:
    quick: bool
    seconds_per_run: int
    rounds: int
    warmup_seconds: int


# A process started here in a session of its own; ready when ``ready_url`` answers 200.
@dataclass(frozen=True, slots=True)
class Service:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    ready_url: str
    log: Path


@dataclass(slots=True)
class Run:
    gateway: str
    round: int  # 0: warm-up
    requests: int = 0
    seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    pv_debited: int | None = None  # metered only
    error: str = ""

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def problems(self) -> list[str]:
        """Why the run cannot count; empty when it adds up."""
        found = [self.error] if self.error else []
        found += [f"{n} {kind} errors" for kind, n in self.errors.items() if n]
        served = self.requests - self.errors.get("status", 0)
        if self.pv_debited is not None and self.pv_debited != served:
            found.append(f"PV debited {self.pv_debited} != 2xx responses {served}")
        if self.requests <= 0 and not self.error:
            found.append("no request answered")
        return found


def serve_origin(port: int) -> None:
    """The aiohttp origin, run by a child ``python -c``: the page for any GET."""
    import uvloop

    body = PAGE.encode()

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/html")

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    loop = uvloop.new_event_loop()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=loop)


def stop_process(process: subprocess.Popen[bytes], sig: int) -> None:
    """Stop a process started in a session of its own, and whatever it started."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    with contextlib.suppress(ProcessLookupError):  # what it started and left behind
        os.killpg(process.pid, signal.SIGKILL)


def spawn(
    stack: contextlib.ExitStack, tmp: Path, name: str, argv: list[str], ready: str, port: int
) -> Service:
    log = tmp / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PVGATE_")}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    stack.callback(stop_process, process, signal.SIGQUIT if name == "nginx" else signal.SIGTERM)
    return Service(name, process, port, ready, log)


def start_origin(stack: contextlib.ExitStack, tmp: Path) -> Service:
    """nginx if it is on PATH, else the aiohttp origin."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    nginx = shutil.which("nginx")
    if nginx is None:
        code = f"from benchmarks.proxy import serve_origin; serve_origin({port})"
        return spawn(stack, tmp, "aiohttp", [sys.executable, "-c", code], url, port)
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(t=tmp, port=port, page=PAGE))
    argv = [nginx, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "nginx.err")]
    return spawn(stack, tmp, "nginx", argv, url, port)


def start_gateway(
    stack: contextlib.ExitStack, tmp: Path, name: str, settings: dict[str, Any]
) -> Service:
    """``python -m pvgate.cli gateway --config FILE``: one worker, free ports."""
    port, metrics_port = free_port(), free_port()
    where = {"listen": f"127.0.0.1:{port}", "metrics_listen": f"127.0.0.1:{metrics_port}"}
    config = {**where, "workers": 1, "log_level": "warning", **settings}
    path = tmp / f"{name}.toml"
    path.write_text(tomli_w.dumps(config))
    argv = [sys.executable, "-m", "pvgate.cli", "gateway", "--config", str(path)]
    return spawn(stack, tmp, name, argv, f"http://127.0.0.1:{metrics_port}/readyz", port)


def start_all(stack: contextlib.ExitStack, tmp: Path) -> tuple[int, list[Service]]:
    """Redis, the origin and both gateways (not yet ready): Redis's port, the services."""
    redis_server = stack.enter_context(RedisServer())
    origin = start_origin(stack, tmp)
    site = {"host": HOST, "enterprise_id": ENTERPRISE, "origin": origin.ready_url.rstrip("/")}
    common = {"redis": {"url": redis_server.url}, "site": [{**site, "status": "approved"}]}
    metered = start_gateway(stack, tmp, "metered", common)
    unmetered = start_gateway(stack, tmp, "unmetered", {**common, "metering": False})
    return redis_server.port, [origin, metered, unmetered]


async def wait_ready(service: Service) -> None:
    deadline = time.monotonic() + READY_S
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline and service.process.poll() is None:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(service.ready_url) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    state = "exited" if service.process.poll() is not None else f"not ready in {READY_S} s"
    tail = service.log.read_text(errors="replace")[-2000:] if service.log.exists() else ""
    raise RuntimeError(f"{service.name} {state}; its log ends:\n{tail}")


async def run_wrk(script: Path, gateway: Service, seconds: int, number: int) -> Run:
    """``seconds`` of wrk against ``gateway`` (then the drain): what it counted."""
    run = Run(gateway.name, number)
    stop_at = time.time() + seconds
    process = await asyncio.create_subprocess_exec(
        *("wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds + DRAIN_S}s", "--timeout=2s"),
        *("-s", str(script), f"http://127.0.0.1:{gateway.port}/", "--", f"{stop_at:.6f}"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await process.communicate()
    finally:
        if process.returncode is None:  # cancelled (Ctrl-C): wrk goes too
            process.kill()
            await process.wait()
    text = output.decode(errors="replace")
    found = [line[len(MARK) :] for line in text.splitlines() if line.startswith(MARK)]
    data = json.loads(found[-1]) if found else {}
    if process.returncode != 0 or not data.get("started"):
        run.error = f"wrk exited {process.returncode}, sent nothing?: {text.strip()[-500:]}"
        return run
    run.requests, run.seconds = data["requests"], stop_at - data["started"]
    run.errors = {k: data[k] for k in ("connect", "read", "write", "status", "timeout")}
    run.latency_ms = {p: data[p] / 1000 for p in PERCENTILES}
    return run


async def one_run(store: BalanceStore, script: Path, gw: Service, seconds: int, n: int) -> Run:
    """A wrk run; for the metered gateway with the PV debited meanwhile."""
    before = await store.snapshot(ENTERPRISE)
    run = await run_wrk(script, gw, seconds, n)
    if gw.name == "metered":
        after = await store.snapshot(ENTERPRISE)
        run.pv_debited = sum(b.used for b in after.buckets) - sum(b.used for b in before.buckets)
    print(line(run), flush=True)
    return run


async def measure(redis_port: int, services: Sequence[Service], config: Config) -> list[Run]:
    """Ready checks, credit, warm-up, then the interleaved rounds: the counted runs."""
    for service in services:
        await wait_ready(service)
    gateways = [s for s in services if s.name in ("metered", "unmetered")]
    script = services[0].log.parent / "pageview.lua"
    script.write_text(WRK_LUA % {"host": HOST, "mark": MARK})
    client = Redis(host="127.0.0.1", port=redis_port, decode_responses=True)
    runs = []
    try:
        store = BalanceStore(client, timeout=10.0)
        if not await store.credit(ENTERPRISE, package("bench-pkg", 10**12)):
            raise RuntimeError("the benchmark enterprise had been credited before")
        for gw in gateways:
            await one_run(store, script, gw, config.warmup_seconds, 0)
        for n in range(1, config.rounds + 1):
            for gw in gateways if n % 2 else gateways[::-1]:
                runs.append(await one_run(store, script, gw, config.seconds_per_run, n))
    finally:
        await client.aclose()
    return runs


def line(run: Run) -> str:
    problems = run.problems()
    label, bad = (f"round {run.round}", "INVALID") if run.round else ("warm-up", "not counted")
    verdict = f"{bad}: {'; '.join(problems)}" if problems else "valid"
    lat = "  ".join(f"{p} {v:6.2f} ms" for p, v in run.latency_ms.items())
    pv = "" if run.pv_debited is None else f"   PV debited {run.pv_debited:,}"
    return (
        f"{run.gateway:<10}{label:<9}{run.rate:>8,.0f} req/s   {lat}"
        f"   {run.requests:,} requests in {run.seconds:.2f} s{pv}   {verdict}"
    )


def summary(runs: Sequence[Run], config: Config, origin: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    latency: dict[str, dict[str, float] | None] = {}
    for name in ("metered", "unmetered"):
        good = [r for r in runs if r.gateway == name and not r.problems()]
        result[name] = median(r.rate for r in good) if good else None
        latency[name] = None
        if good:
            latency[name] = {p: median(r.latency_ms[p] for r in good) for p in PERCENTILES}
    metered, unmetered = result["metered"], result["unmetered"]
    ratio = metered / unmetered if metered and unmetered else None
    valid = bool(runs) and not any(r.problems() for r in runs)
    result.update(
        metered_ratio=ratio,
        target=TARGET,
        target_met=valid and ratio is not None and ratio >= TARGET,
        valid=valid,
        **asdict(config),
        origin=origin,
        latency_ms=latency,
        wrk={"threads": THREADS, "connections": CONNECTIONS},
        runs=[{**asdict(r), "rate": r.rate, "problems": r.problems()} for r in runs],
    )
    return result


def print_summary(result: dict[str, Any]) -> None:
    for name in ("metered", "unmetered"):
        rate, lat = result[name], result["latency_ms"][name] or {}
        shown = "  ".join(f"{p} {v:.2f} ms" for p, v in lat.items())
        print(f"{name:<10}= " + (f"{rate:>8,.0f} req/s   {shown}" if rate else "no valid run"))
    ratio, met = result["metered_ratio"], "met" if result["target_met"] else "NOT met"
    shown = "invalid" if ratio is None else f"{ratio:.3f}"
    print(f"metered_ratio = {shown}   target >= {TARGET:g}   {met}")
    print("all runs valid" if result["valid"] else "INVALID: see the runs above")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.proxy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="2 rounds of 4 s, not 3 of 15 s")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk (Debian package wrk)", file=sys.stderr)
        return 2
    quick = args.quick
    config = Config(quick, 4 if quick else 15, 2 if quick else 3, 1 if quick else 2)
    origin, runs = "none", []
    # The stack stops the processes first, then the temporary directory goes.
    with (
        tempfile.TemporaryDirectory(prefix="pvgate-proxybench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        try:
            redis_port, services = start_all(stack, Path(tmp))
            origin = services[0].name
            print(
                f"proxy benchmark: wrk -t{THREADS} -c{CONNECTIONS}, {config.warmup_seconds} s "
                f"warm-up, then {config.rounds} rounds of {config.seconds_per_run} s per "
                f"gateway, interleaved, origin {origin}",
                flush=True,
            )
            runs = asyncio.run(measure(redis_port, services, config))
        except Exception:  # set-up failed: say why, stop everything, report invalid
            traceback.print_exc()
    result = summary(runs, config, origin)
    print_summary(result)
    if args.json:
        print(json.dumps(result))
    return 0 if result["valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
