"""The gateway's aiohttp application: route, classify, charge, proxy (DESIGN §4).

Per request: one dictionary lookup for the site, a header check for whether it is a page
view, at most one Meter debit (batched with its neighbours into one Redis round trip),
then the origin.  Long-lived pieces live in ``cleanup_ctx`` and are reached through
typed app keys.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator

from aiohttp import web
from redis import exceptions as redis_errors

from gateway import blockpage
from gateway.admission import Admission
from gateway.charging import UNMETERED, Blocked, Charger, Granted
from gateway.classify import is_page_view
from gateway.metrics import OUTCOME, REQUEST_DURATION
from gateway.proxy import BodyTooLarge, StreamBroken, Upstream, UpstreamFailure, read_limited
from gateway.routing import SiteWatcher
from gateway.settings import GatewaySettings
from metering import BalanceStore, Meter
from metering.buckets import Refusal
from metering.scripts import RedisClient
from metering.sites import Site
from metering.usage import UsageRecorder

log = logging.getLogger("pvgate.gateway")

SETTINGS = web.AppKey("settings", GatewaySettings)
REDIS: web.AppKey[RedisClient] = web.AppKey("redis")
SITES = web.AppKey("sites", SiteWatcher)
UPSTREAM = web.AppKey("upstream", Upstream)
CHARGER = web.AppKey("charger", Charger)
USAGE = web.AppKey("usage", UsageRecorder)
ADMISSION = web.AppKey("admission", Admission)

_HOST = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")
_HTML = "text/html; charset=utf-8"
_BLOCK_OUTCOME = {reason: OUTCOME[f"blocked_{reason.value}"] for reason in Refusal}


def request_host(request: web.Request) -> str | None:
    """The lowercase host the request is for, or None if missing, invalid or contradictory.

    An absolute-form target (``GET http://other/ HTTP/1.1``) must name the same host as
    the Host header: the gateway never forwards to a host a client names in its target.
    """
    raw = request.headers.get("Host")
    if raw is None:
        return None
    host = raw.rpartition(":")[0] if raw.rpartition(":")[2].isdigit() else raw
    host = host.lower().rstrip(".")
    if not _HOST.fullmatch(host):
        return None
    target = request.url.host if request.raw_path[:1] != "/" else None
    if target is not None and target.lower() != host:
        return None
    return host


def _page(status: int, body: bytes, extra: dict[str, str] | None = None) -> web.Response:
    headers = {"Cache-Control": "no-store", **(extra or {})}
    return web.Response(
        status=status, body=body, content_type="text/html", charset="utf-8", headers=headers
    )


def blocked_response(settings: GatewaySettings, reason: Refusal) -> web.Response:
    _BLOCK_OUTCOME[reason].inc()
    return _page(
        settings.block_status, blockpage.BLOCK_PAGES[reason], {"X-PV-Block-Reason": reason.value}
    )


async def handle(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    admission = request.app[ADMISSION]
    if not admission.try_enter() and not await admission.enter():
        OUTCOME["overloaded"].inc()
        return _page(503, blockpage.UNAVAILABLE_PAGE, {"Retry-After": "1"})
    try:
        return await _handle(request)
    finally:
        admission.leave()
        REQUEST_DURATION.observe(time.perf_counter() - started)


async def _handle(request: web.Request) -> web.StreamResponse:
    app = request.app
    settings = app[SETTINGS]
    host = request_host(request)
    if host is None or request.version < (1, 0):  # HTTP/0.9 has no headers to trust
        OUTCOME["bad_request"].inc()
        return web.Response(status=400, text="invalid or missing Host\n")
    site = app[SITES].table.route(host, request.path)
    if site is None:
        OUTCOME["unknown_site"].inc()
        return _page(404, blockpage.NOT_FOUND_PAGE)
    length = request.content_length
    if length is not None and length > settings.limits.max_body_bytes:
        OUTCOME["bad_request"].inc()
        return web.Response(status=413, text="request body too large\n")
    if not settings.metering:
        return await _proxy(request, site, host, None)
    charger = app[CHARGER]
    if not is_page_view(request.method, request.path, request.headers, site):
        reason = charger.blocked(site.enterprise_id)
        if reason is not None:
            return blocked_response(settings, reason)
        return await _proxy(request, site, host, None)
    buffered = None
    if request.body_exists and length is None:
        # A page view with a body of unknown length (chunked): read it, within the
        # limit, before the PV is taken — the origin might answer before reading it.
        try:
            buffered = await read_limited(request, settings.limits.max_body_bytes)
        except BodyTooLarge:
            OUTCOME["bad_request"].inc()
            return web.Response(status=413, text="request body too large\n")
    charge = await charger.charge(site.enterprise_id)
    if isinstance(charge, Granted):
        return await _proxy(request, site, host, charge.bucket_id, buffered=buffered)
    if isinstance(charge, Blocked):
        return blocked_response(settings, charge.reason)
    if charge is UNMETERED:
        OUTCOME["fail_open"].inc()
        return await _proxy(request, site, host, None, count=False, buffered=buffered)
    OUTCOME["fail_closed"].inc()
    return _page(503, blockpage.UNAVAILABLE_PAGE, {"Retry-After": "1"})


async def _proxy(
    request: web.Request,
    site: Site,
    host: str,
    bucket_id: str | None,
    *,
    count: bool = True,
    buffered: bytes | None = None,
) -> web.StreamResponse:
    """Forward; when the origin fails to deliver a charged view, its PV goes back."""
    app = request.app
    try:
        result = await app[UPSTREAM].forward(request, site, host, buffered)
    except BodyTooLarge:
        result = UpstreamFailure(413, "request body too large")
    except StreamBroken:
        if bucket_id is not None:
            await app[CHARGER].give_back(site.enterprise_id, bucket_id)
        OUTCOME["upstream_error"].inc()
        raise  # the response has started: all that is left is to drop the connection
    except Exception as exc:  # a bug must not cost the visitor's PV
        log.exception("forwarding to %s failed", site.origin)
        result = UpstreamFailure(502, f"{type(exc).__name__}: {exc}")
    failed = isinstance(result, UpstreamFailure) or result.status >= 500
    if bucket_id is not None and failed:
        await app[CHARGER].give_back(site.enterprise_id, bucket_id)
    if isinstance(result, UpstreamFailure):
        if result.status == 413:
            OUTCOME["bad_request"].inc()
            return web.Response(status=413, text="request body too large\n")
        OUTCOME["upstream_error"].inc()
        log.warning("origin %s for %s: %s", site.origin, site.key, result.detail)
        return _page(result.status, blockpage.UNAVAILABLE_PAGE)
    if count:
        OUTCOME["upstream_error" if failed else ("served" if bucket_id else "not_counted")].inc()
    return result


async def _resources(app: web.Application) -> AsyncIterator[None]:
    """Redis, sites, Meter, usage recorder and the origin pool, opened and closed in order."""
    settings = app[SETTINGS]
    client = await settings.redis.open()
    app[REDIS] = client
    sites = SiteWatcher(client, settings.sites(), refresh=settings.sites_refresh_ms / 1000)
    await sites.start()
    app[SITES] = sites
    usage = UsageRecorder(client, settings.identity(), interval=settings.usage_flush_ms / 1000)
    await usage.start()
    app[USAGE] = usage
    meter = Meter(client, timeout=settings.redis.timeout_ms / 1000)
    try:
        await meter.prepare()  # no NOSCRIPT round trips on the first page views
    except redis_errors.RedisError as exc:
        log.warning("could not preload the metering scripts: %s", exc)
    app[CHARGER] = Charger(
        meter,
        BalanceStore(client),
        usage,
        settings.failure,
        blocked_cache=settings.blocked_cache_ms / 1000,
    )
    upstream = Upstream(settings.upstream, settings.limits.max_body_bytes)
    await upstream.start()
    app[UPSTREAM] = upstream
    reporting = asyncio.create_task(_report(app[ADMISSION]))
    yield
    reporting.cancel()
    await upstream.aclose()
    await app[CHARGER].aclose()  # replays reach the usage recorder before its last flush
    await meter.aclose()
    await usage.aclose()  # the final flush: a graceful stop loses no usage
    await sites.aclose()
    await client.aclose()


async def _report(admission: Admission) -> None:
    while True:
        admission.report()
        await asyncio.sleep(1.0)


def create_app(settings: GatewaySettings) -> web.Application:
    app = web.Application(client_max_size=settings.limits.max_body_bytes)
    app[SETTINGS] = settings
    limits = settings.admission
    app[ADMISSION] = Admission(
        limits.max_inflight, limits.max_queued, limits.queue_timeout_ms / 1000
    )
    app.cleanup_ctx.append(_resources)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app
