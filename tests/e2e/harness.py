"""Real processes for the end-to-end tests: the gateway as `pvgate gateway`, an origin.

The origin is an aiohttp server on loopback in the test's own event loop; the gateway is
a separate process tree (supervisor + workers) started from a TOML file written here.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import tomli_w
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from pvgate.embedded import RedisClusterServers, RedisServer, free_port

PAGE = b"""<!doctype html><html><head><link rel="stylesheet" href="/static/app.css">
<script src="/static/app.js"></script></head><body><img src="/static/logo.png">
<h1>Landing page</h1></body></html>"""
HTML_HEADERS = {
    "Accept": "text/html,application/xhtml+xml",
    "Sec-Fetch-Dest": "document",
    "Sec-Fetch-Mode": "navigate",
}


def asset_headers(dest: str) -> dict[str, str]:
    return {"Accept": "*/*", "Sec-Fetch-Dest": dest, "Sec-Fetch-Mode": "no-cors"}


@dataclass
class Origin:
    """A landing-page origin that counts what reaches it."""

    port: int = field(default_factory=free_port)
    hits: Counter[str] = field(default_factory=Counter)
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Origin:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.hits[path] += 1
        if path == "/fail500":
            return web.Response(status=503, text="origin broken")
        if path == "/slow":
            await asyncio.sleep(5)
        if path == "/echo":
            body = await request.read()
            return web.json_response(
                {
                    "method": request.method,
                    "path": request.path_qs,
                    "headers": dict(request.headers),
                    "body": body.decode(errors="replace"),
                }
            )
        if path == "/gzip":
            return web.Response(
                body=gzip.compress(PAGE),
                content_type="text/html",
                headers={"Content-Encoding": "gzip"},
            )
        if path == "/big":
            response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            await response.prepare(request)
            for _ in range(64):
                await response.write(b"x" * 32768)
            return response
        if path.startswith("/static/"):
            kind = "text/css" if path.endswith(".css") else "application/octet-stream"
            return web.Response(body=b"/* asset */", content_type=kind)
        return web.Response(body=PAGE, content_type="text/html")


def redis_config(servers: RedisServer | RedisClusterServers) -> dict[str, Any]:
    if isinstance(servers, RedisServer):
        return {"url": servers.url}
    return {"cluster_nodes": [f"{h}:{p}" for h, p in servers.startup_nodes]}


@dataclass
class Gateway:
    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_ready(self, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                assert self.process.poll() is None, f"gateway exited: {self.log_text()}"
                try:
                    async with session.get(self.metrics_url("/readyz")) as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"gateway not ready in {within}s: {self.log_text()}")

    def workers(self) -> list[int]:
        """The pids of the gateway's worker processes."""
        found = subprocess.run(
            ["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True
        ).stdout.split()
        return [int(pid) for pid in found if _is_worker(pid)]

    def metrics_url(self, path: str = "/metrics") -> str:
        return f"http://127.0.0.1:{self.metrics_port}{path}"

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with aiohttp.ClientSession() as session, session.get(self.metrics_url()) as resp:
            text = await resp.text()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode

    def log_text(self) -> str:
        return self.log.read_text()[-4000:] if self.log.exists() else ""


def start_gateway(tmp: Path, settings: dict[str, Any]) -> Gateway:
    """``pvgate gateway --config FILE`` with ``settings`` (TOML data) and free ports."""
    port, metrics_port = free_port(), free_port()
    config = {
        "listen": f"127.0.0.1:{port}",
        "metrics_listen": f"127.0.0.1:{metrics_port}",
        "log_level": "warning",
        **settings,
    }
    path = tmp / f"gateway-{port}.toml"
    path.write_text(tomli_w.dumps(config))
    log = tmp / f"gateway-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PVGATE_")}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "pvgate.cli", "gateway", "--config", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return Gateway(process, port, metrics_port, log)


def site(origin: Origin, enterprise: str, host: str = "shop.test", **extra: Any) -> dict[str, Any]:
    return {
        "host": host,
        "enterprise_id": enterprise,
        "origin": origin.url,
        "status": "approved",
        **extra,
    }


def sample(metrics: dict[Any, float], name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def _is_worker(pid: str) -> bool:
    """A child that is not multiprocessing's resource tracker and is still alive (pgrep's
    answer may name a worker that has exited since)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "resource_tracker" not in cmdline
