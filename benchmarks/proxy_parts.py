"""The pieces of the proxy benchmark: processes, wrk and its script, /proc readings."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import tomli_w
from aiohttp import web

from pvgate.embedded import RedisServer, free_port

DRAIN_S = 1  # whole seconds after the window for the answers in flight to arrive
HOST, ENTERPRISE = "bench.test", "bench"
READY_S = 30
MARK = "PVBENCH "
PERCENTILES = ("p50", "p90", "p99")
# ~4 KB, and nothing nginx would read as a quote, an escape or a variable.
PAGE = "<!doctype html><html><head><title>bench</title></head><body>{}</body></html>".format(
    "".join(f"<p>Paragraph {i}: a landing page, served as is by the origin.</p>" for i in range(62))
)


def _temp_paths(t: Path, name: str) -> str:
    return " ".join(
        f"{kind}_temp_path {t}/{kind}-{name};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )


def origin_conf(t: Path, port: int) -> str:
    return (
        f"daemon off; worker_processes 1; pid {t}/origin.pid; error_log {t}/origin.err;\n"
        "events { worker_connections 4096; }\n"
        f"http {{ access_log off; keepalive_requests 1000000; {_temp_paths(t, 'origin')}\n"
        f"  server {{ listen 127.0.0.1:{port};\n"
        f"    location / {{ default_type text/html; return 200 '{PAGE}'; }} }} }}\n"
    )


def proxy_conf(t: Path, port: int, origin: int, workers: int) -> str:
    return (
        f"daemon off; worker_processes {workers}; pid {t}/proxy.pid; error_log {t}/proxy.err;\n"
        "events { worker_connections 4096; }\n"
        f"http {{ access_log off; keepalive_requests 1000000; {_temp_paths(t, 'proxy')}\n"
        f"  upstream origin {{ server 127.0.0.1:{origin}; keepalive 64; }}\n"
        f"  server {{ listen 127.0.0.1:{port};\n"
        "    location / { proxy_pass http://origin; proxy_http_version 1.1;\n"
        '      proxy_set_header Connection ""; } } }\n'
    )


# wrk runs LuaJIT: gettimeofday through its FFI, as plain Lua only tells whole seconds.
# args: the end of the window (epoch s) and, for a paced run, ms between two requests of
# one connection.
WRK_LUA = """local ffi = require("ffi")
ffi.cdef("typedef struct { long s; long us; } pvb_tv; int gettimeofday(pvb_tv *tv, void *tz);")
local tv = ffi.new("pvb_tv")
local function now() ffi.C.gettimeofday(tv, nil); return tonumber(tv.s) + tonumber(tv.us) / 1e6 end
wrk.method, wrk.path = "GET", "/"
local h = wrk.headers
h["Host"], h["Accept"], h["Sec-Fetch-Dest"] = "%(host)s", "text/html", "document"
local threads = {}; stop_at, first, pace = 0, 0, 0
function setup(thread) table.insert(threads, thread) end
function init(args) stop_at = tonumber(args[1]); pace = tonumber(args[2] or "0") end
-- Before every request; past the window the connection stays idle until wrk exits.
function delay()
  local t = now()
  if first == 0 then first = t end
  if t >= stop_at then return 3600000 end
  return pace
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
class Service:
    """A process started here in a session of its own; ready when ``ready_url`` answers."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    ready_url: str
    log: Path


@dataclass(slots=True)
class Run:
    service: str
    round: int  # 0: warm-up; -1: paced
    requests: int = 0
    seconds: float = 0.0
    cpu_s: float = 0.0
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

    def line(self) -> str:
        problems = self.problems()
        label = {0: "warm-up", -1: "paced"}.get(self.round, f"round {self.round}")
        verdict = f"INVALID: {'; '.join(problems)}" if problems else "valid"
        lat = "  ".join(f"{p} {v:6.2f} ms" for p, v in self.latency_ms.items())
        pv = "" if self.pv_debited is None else f"   PV {self.pv_debited:,}"
        cpu = self.cpu_s / self.requests * 10_000 if self.requests else 0.0
        return (
            f"{self.service:<10}{label:<9}{self.rate:>8,.0f} req/s   {lat}   "
            f"{cpu:5.2f} CPU s/10k{pv}   {verdict}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rate": self.rate, "problems": self.problems()}


def spawn(
    stack: contextlib.ExitStack, tmp: Path, name: str, argv: list[str], ready: str, port: int
) -> Service:
    log = tmp / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PVGATE_")}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    stack.callback(stop_process, process, signal.SIGQUIT if "nginx" in name else signal.SIGTERM)
    return Service(name, process, port, ready, log)


def stop_process(process: subprocess.Popen[bytes], sig: int) -> None:
    """Stop a process started in a session of its own, and whatever it started."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _nginx(stack: contextlib.ExitStack, tmp: Path, name: str, conf: str, port: int) -> Service:
    path = tmp / f"{name}.conf"
    path.write_text(conf)
    nginx = shutil.which("nginx")
    assert nginx is not None
    argv = [nginx, "-p", str(tmp), "-c", str(path), "-e", str(tmp / f"{name}.err")]
    return spawn(stack, tmp, name, argv, f"http://127.0.0.1:{port}/", port)


def serve_origin(port: int) -> None:
    """The aiohttp origin (no nginx here), run by a child ``python -c``."""
    import uvloop

    body = PAGE.encode()

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/html")

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None,
                loop=uvloop.new_event_loop())  # fmt: skip


def start_origin(stack: contextlib.ExitStack, tmp: Path) -> Service:
    """An nginx of its own serving the page; the aiohttp origin without nginx."""
    port = free_port()
    if shutil.which("nginx") is None:
        code = f"from benchmarks.proxy_parts import serve_origin; serve_origin({port})"
        argv = [sys.executable, "-c", code]
        return spawn(stack, tmp, "aiohttp-origin", argv, f"http://127.0.0.1:{port}/", port)
    return _nginx(stack, tmp, "nginx-origin", origin_conf(tmp, port), port)


def gateway(
    stack: contextlib.ExitStack,
    tmp: Path,
    name: str,
    workers: int,
    settings: dict[str, Any],
    under: Sequence[str] = (),
) -> Service:
    """A pvgate gateway (run ``under`` a tool such as valgrind, if given)."""
    port, metrics = free_port(), free_port()
    config = {"listen": f"127.0.0.1:{port}", "metrics_listen": f"127.0.0.1:{metrics}",
              "workers": workers, "log_level": "warning", **settings}  # fmt: skip
    path = tmp / f"{name}-{workers}.toml"
    path.write_text(tomli_w.dumps(config))
    argv = [*under, sys.executable, "-m", "pvgate.cli", "gateway", "--config", str(path)]
    return spawn(stack, tmp, name, argv, f"http://127.0.0.1:{metrics}/readyz", port)


def start_contenders(
    stack: contextlib.ExitStack, tmp: Path, redis: RedisServer, origin: Service, workers: int
) -> list[Service]:
    """nginx proxy_pass (when nginx is here), pvgate unmetered and metered."""
    services = []
    if origin.name == "nginx-origin":
        port = free_port()
        conf = proxy_conf(tmp, port, origin.port, workers)
        services.append(_nginx(stack, tmp, "nginx", conf, port))
    site = {"host": HOST, "enterprise_id": ENTERPRISE, "status": "approved",
            "origin": f"http://127.0.0.1:{origin.port}"}  # fmt: skip
    common = {"redis": {"url": redis.url}, "site": [site]}
    services.append(gateway(stack, tmp, "unmetered", workers, {**common, "metering": False}))
    services.append(gateway(stack, tmp, "metered", workers, common))
    return services


async def wait_ready(service: Service, within: float = READY_S) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline and service.process.poll() is None:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(service.ready_url, headers={"Host": HOST}) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    state = "exited" if service.process.poll() is not None else f"not ready in {within} s"
    tail = service.log.read_text(errors="replace")[-2000:] if service.log.exists() else ""
    raise RuntimeError(f"{service.name} {state}; its log ends:\n{tail}")


async def run_wrk(
    service: Service,
    seconds: int,
    number: int,
    *,
    threads: int = 1,
    connections: int = 50,
    rate: float | None = None,
) -> Run:
    """``seconds`` of wrk against ``service`` (then the drain): what it counted.  With
    ``rate``, each connection waits between requests so that all send about that many."""
    run = Run(service.name, number)
    script = service.log.parent / "pageview.lua"
    script.write_text(WRK_LUA % {"host": HOST, "mark": MARK})
    stop_at = time.time() + seconds
    pace = f"{connections / rate * 1000:.3f}" if rate else "0"
    process = await asyncio.create_subprocess_exec(
        *("wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds + DRAIN_S}s", "--timeout=2s"),
        *("-s", str(script), f"http://127.0.0.1:{service.port}/", "--", f"{stop_at:.6f}", pace),
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


def workers_of(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children alive now (from /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for each in (pid, *workers_of(pid)):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            fields = Path(f"/proc/{each}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def resident(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0
