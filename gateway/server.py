"""Running the gateway: a supervisor and N worker processes sharing the port.

The supervisor binds the listen address — once without SO_REUSEPORT first, so that a
port some other process listens on (another gateway included) stops start-up instead of
being silently shared — then one SO_REUSEPORT socket per worker, so that the kernel
spreads connections over the workers.  It starts the workers (spawned, each with uvloop
and its own Redis client, Meter and origin pool, each handed its socket), restarts a
worker that dies on the same socket with back-off, stops when one dies at start-up
(`gateway.workers`), and serves ``/metrics`` (every worker's metrics
through prometheus multiprocess mode), ``/healthz`` and ``/readyz`` on the metrics port.
SIGTERM: the workers stop accepting, finish what is in flight (bounded by
``limits.shutdown_grace_s``), flush their usage and exit; then the supervisor exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

from aiohttp import web

from gateway.settings import GatewaySettings, split_address
from gateway.workers import StartupFailed, WorkerPool
from metering.config import ConfigError
from metering.logs import configure_logging

log = logging.getLogger("pvgate.server")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def listen_sockets(address: str, count: int) -> list[socket.socket]:
    """``count`` listening SO_REUSEPORT sockets on ``address``; `ConfigError` if it is taken."""
    host, port = split_address(address, "listen")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"listen address {address}: {exc.strerror}") from exc
    sockets = []
    for _ in range(count):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


def serve(settings: GatewaySettings) -> int:
    """Run the supervisor until SIGTERM or SIGINT; the exit status."""
    configure_logging(settings.log_level)
    return asyncio.run(supervise(settings))


async def supervise(settings: GatewaySettings) -> int:
    """The supervisor in the running event loop (the all-in-one commands share it)."""
    metrics_dir = Path(tempfile.mkdtemp(prefix="pvgate-metrics-"))
    # Set before any worker imports prometheus_client: it picks its value class then.
    os.environ[MULTIPROC_ENV] = str(metrics_dir)
    try:
        return await Supervisor(settings, metrics_dir).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


class Supervisor:
    def __init__(self, settings: GatewaySettings, metrics_dir: Path) -> None:
        self.settings = settings
        self.metrics_dir = metrics_dir
        self.pool = WorkerPool(settings, metrics_dir)
        self.sockets: list[socket.socket] = []
        self.stopping = asyncio.Event()
        self._redis_ok = (0.0, False)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        self.sockets = listen_sockets(self.settings.listen, self.settings.workers)
        self.pool.start(self.sockets)
        runner = web.AppRunner(self._metrics_app(), access_log=None)
        await runner.setup()
        host, port = split_address(self.settings.metrics_listen, "metrics_listen")
        await web.TCPSite(runner, host, port).start()
        log.info(
            "gateway on %s with %d workers, metrics on %s",
            self.settings.listen,
            len(self.sockets),
            self.settings.metrics_listen,
        )
        status = 0
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), 0.2)
            try:
                self.pool.check()
            except StartupFailed as exc:
                log.error("%s: the gateway stops", exc)
                status = 1
                break
        await self.pool.stop()
        for sock in self.sockets:
            sock.close()
        await runner.cleanup()
        return status

    def _metrics_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        return app

    async def _metrics(self, request: web.Request) -> web.Response:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        await self._flush_workers()
        registry = CollectorRegistry()
        MultiProcessCollector(registry, str(self.metrics_dir))  # type: ignore[no-untyped-call]
        body = await asyncio.to_thread(generate_latest, registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _flush_workers(self, within: float = 0.5) -> None:
        """Have every ready worker add what it counted locally (`metering.metrics`) before
        the scrape is read: SIGUSR1, answered by a bumped ``flushed-<pid>`` file."""
        waiting: dict[Path, str] = {}
        for process in self.pool.processes:
            pid = process.pid
            if pid is None or not process.is_alive():
                continue
            if not (self.metrics_dir / f"ready-{pid}").exists():
                continue  # not ready: it may not handle SIGUSR1 yet
            marker = self.metrics_dir / f"flushed-{pid}"
            waiting[marker] = marker.read_text() if marker.exists() else ""
            os.kill(pid, signal.SIGUSR1)
        deadline = time.monotonic() + within
        while waiting and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
            for marker, before in list(waiting.items()):
                if marker.exists() and marker.read_text() != before:
                    del waiting[marker]

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        ready = self.pool.ready()
        redis_ok = await self._redis_reachable()
        # In fail_open the workers serve through a Redis outage, by design: taking every
        # gateway out of rotation at once would refuse what fail_open exists to serve.
        redis_needed = self.settings.failure.mode == "fail_closed"
        ok = (
            (redis_ok or not redis_needed)
            and len(ready) == len(self.sockets)
            and not self.stopping.is_set()
        )
        body = {
            "ready": ok,
            "redis": redis_ok,
            "workers": len(self.sockets),
            "workers_ready": len(ready),
        }
        return web.json_response(body, status=200 if ok else 503)

    async def _redis_reachable(self) -> bool:
        checked_at, ok = self._redis_ok
        if time.monotonic() - checked_at < 1.0:
            return ok
        try:
            client = await self.settings.redis.open()
            try:
                async with asyncio.timeout(1.0):
                    ok = bool(await client.ping())
            finally:
                await client.aclose()
        except Exception as exc:  # any failure to reach Redis means not ready
            log.warning("readiness: Redis unreachable: %s", exc)
            ok = False
        self._redis_ok = (time.monotonic(), ok)
        return ok
