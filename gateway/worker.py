"""One gateway worker process: uvloop, the engine on its SO_REUSEPORT socket, SIGTERM.

The worker opens its long-lived pieces in order — Redis, the site table, the usage
recorder, the Meter and the Charger, the origin pool — serves with `gateway.engine`, and
on SIGTERM or SIGINT closes them in reverse: the engine stops accepting and finishes the
requests in flight (``limits.shutdown_grace_s``), replays reach the usage recorder, and
the recorder's final flush writes every PV counted (docs/architecture.md §2).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import uvloop
from redis import exceptions as redis_errors

from gateway.admission import Admission
from gateway.charging import Charger
from gateway.engine.origin import OriginPool
from gateway.engine.server import Engine
from gateway.policy import Policy
from gateway.routing import SiteWatcher
from gateway.settings import GatewaySettings
from metering import BalanceStore, Meter, metrics
from metering.build import build
from metering.logs import configure_logging
from metering.usage import UsageRecorder

log = logging.getLogger("pvgate.worker")


def _stop_with_supervisor(supervisor: int) -> None:
    """Ask Linux for SIGTERM when the supervisor dies (even by ``kill -9``): a worker must
    not go on serving, and holding the port, for a gateway that is gone."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before we asked
        os.kill(os.getpid(), signal.SIGTERM)


_PR_SET_PDEATHSIG = 1


def run_worker(
    settings: GatewaySettings, metrics_dir: str, sock: socket.socket, supervisor: int
) -> None:
    _stop_with_supervisor(supervisor)
    configure_logging(settings.log_level)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_serve(settings, Path(metrics_dir), sock))
    except BaseException as exc:  # for the supervisor, which reports it (gateway.workers)
        failed = Path(metrics_dir) / f"failed-{os.getpid()}"
        failed.write_text(f"{type(exc).__name__}: {exc}"[:2000])
        raise


@contextlib.asynccontextmanager
async def gateway_engine(settings: GatewaySettings) -> AsyncIterator[tuple[Engine, SiteWatcher]]:
    """The engine and everything it needs, open; closed in order afterwards."""
    client = await settings.redis.open()
    sites = SiteWatcher(client, settings.sites(), refresh=settings.sites_refresh_ms / 1000)
    await sites.start()
    usage = UsageRecorder(client, settings.identity(), interval=settings.usage_flush_ms / 1000)
    await usage.start()
    meter = Meter(
        client,
        timeout=settings.redis.timeout_ms / 1000,
        wait_replicas=settings.redis.wait_replicas,
        usage=usage,
    )
    try:
        await meter.prepare()  # no NOSCRIPT round trips on the first page views
    except redis_errors.RedisError as exc:
        log.warning("could not preload the metering scripts: %s", exc)
    charger = Charger(
        meter,
        BalanceStore(client),
        usage,
        settings.failure,
        blocked_cache=settings.blocked_cache_ms / 1000,
    )
    limits = settings.admission
    admission = Admission(limits.max_inflight, limits.max_queued, limits.queue_timeout_ms / 1000)
    engine = Engine(
        settings.limits,
        Policy(settings, sites, charger if settings.metering else None),
        admission,
        OriginPool(settings.upstream),
        server_header=settings.server_header,
    )
    reporting = asyncio.create_task(_report(admission))
    try:
        yield engine, sites
    finally:
        reporting.cancel()
        await engine.shutdown(settings.limits.shutdown_grace_s)
        await charger.aclose()  # replays reach the usage recorder before its last flush
        await meter.aclose()
        await usage.aclose()  # the final flush: a graceful stop loses no usage
        await sites.aclose()
        await client.aclose()


async def _report(admission: Admission) -> None:
    while True:
        admission.report()
        metrics.flush()
        await asyncio.sleep(1.0)


def _flush_for_scrape(marker: Path, count: list[int]) -> None:
    """SIGUSR1 from the supervisor, about to answer a scrape: flush, then say so."""
    metrics.flush()
    count[0] += 1
    marker.write_text(str(count[0]))


async def _serve(settings: GatewaySettings, metrics_dir: Path, sock: socket.socket) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    flushed = metrics_dir / f"flushed-{os.getpid()}"
    loop.add_signal_handler(signal.SIGUSR1, _flush_for_scrape, flushed, [0])
    async with gateway_engine(settings) as (engine, sites):
        # What was built at start-up lives as long as the worker: out of the collector's
        # way, and young objects collected less often (a request makes few cycles).
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        await engine.serve(sock)
        ready = metrics_dir / f"ready-{os.getpid()}"
        marking = asyncio.create_task(_mark_ready(sites, ready))
        log.info("worker serving on %s (%s)", settings.listen, build())
        await stop.wait()
        marking.cancel()
        ready.unlink(missing_ok=True)
        log.info("worker stopping: finishing requests in flight, flushing usage")
    metrics.flush()
    flushed.unlink(missing_ok=True)


async def _mark_ready(sites: SiteWatcher, ready: Path) -> None:
    """Tell the supervisor this worker is ready once its sites are loaded from Redis."""
    await sites.ready.wait()
    await asyncio.to_thread(ready.touch)
