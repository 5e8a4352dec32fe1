"""One gateway worker process: uvloop, the app, SO_REUSEPORT, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from pathlib import Path

import uvloop
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.app import SITES, create_app
from gateway.metrics import OUTCOME
from gateway.settings import GatewaySettings
from metering.logs import configure_logging

log = logging.getLogger("pvgate.worker")


class _BadRequestFilter(logging.Filter):
    """Counts the requests aiohttp refused as malformed, instead of logging each one.

    aiohttp answers them 400 itself and logs them — with a traceback at ERROR, or at DEBUG
    for a first line that is not HTTP at all (TLS, garbage).  A client sending garbage
    must not flood the logs, and every such request must still be counted, so the
    logger lets DEBUG records through to this filter, which counts and drops those and
    drops anything else below the configured level.
    """

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            OUTCOME["bad_request"].inc()
            return False
        return record.levelno >= self.level


def run_worker(settings: GatewaySettings, metrics_dir: str, sock: socket.socket) -> None:
    configure_logging(settings.log_level)
    server_log = logging.getLogger("aiohttp.server")
    server_log.addFilter(_BadRequestFilter(logging.getLogger().level))
    server_log.setLevel(logging.DEBUG)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(settings, Path(metrics_dir), sock))


async def _serve(settings: GatewaySettings, metrics_dir: Path, sock: socket.socket) -> None:
    limits = settings.limits
    app = create_app(settings)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        # aiohttp arms this at connection start too, so it also bounds a client that
        # trickles its headers and never completes a request.
        keepalive_timeout=limits.header_timeout_s,
        max_line_size=limits.max_header_line,
        max_field_size=limits.max_header_line,
        max_headers=limits.max_headers,
        shutdown_timeout=limits.shutdown_grace_s,
    )
    await runner.setup()
    await web.SockSite(runner, sock).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ready = metrics_dir / f"ready-{os.getpid()}"
    marking = asyncio.create_task(_mark_ready(app, ready))
    log.info("worker serving on %s", settings.listen)
    await stop.wait()
    marking.cancel()
    ready.unlink(missing_ok=True)
    log.info("worker stopping: finishing requests in flight, flushing usage")
    await runner.cleanup()


async def _mark_ready(app: web.Application, ready: Path) -> None:
    """Tell the supervisor this worker is ready once its sites are loaded from Redis."""
    await app[SITES].ready.wait()
    await asyncio.to_thread(ready.touch)
