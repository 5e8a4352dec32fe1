"""Routing a request to its site, and keeping every process's site table current.

`SiteTable` is an immutable lookup built from a list of sites; `SiteWatcher` rebuilds it
when the registry in Redis changes: on a pub/sub notification and, as a safety net, when
a periodic version check (default every second) sees a new version.  No request ever
reads Redis for routing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from metering.keys import SITES_CHANNEL
from metering.scripts import RedisClient
from metering.sites import Site, SiteRegistry, SiteStatus

log = logging.getLogger("pvgate.routing")
# What the clients raise when Redis fails: the cluster client's RedisClusterException is
# not a RedisError, and a socket error may surface as itself.
_REDIS_FAILURES = (redis_errors.RedisError, redis_errors.RedisClusterException, OSError)


class Route:
    """A site as the request path reads it: its fields copied once, when the table is
    built, into a compiled record (each attribute of the interpreted `Site` is a lookup by
    name; docs/architecture.md §4 "Compiled").  A page view's `Route` is also what the
    policy hands back to be charged (`gateway.policy`)."""

    __slots__ = ("enterprise_id", "exclude", "include", "origin", "path_prefix", "ruled", "site")

    def __init__(self, site: Site) -> None:
        self.site = site
        self.enterprise_id: str = site.enterprise_id
        self.origin: str = site.origin
        self.path_prefix: str = site.path_prefix
        self.include: tuple[str, ...] = site.include
        self.exclude: tuple[str, ...] = site.exclude
        self.ruled = bool(site.include or site.exclude)  # has path rules of its own

    def __repr__(self) -> str:
        return f"Route({self.site!r})"


class SiteTable:
    """Approved sites by exact host, by wildcard suffix, then by longest path prefix."""

    def __init__(self, sites: Iterable[Site]) -> None:
        self._exact: dict[str, list[Route]] = {}
        self._wildcard: dict[str, list[Route]] = {}
        count = 0
        for site in sites:
            if site.status is not SiteStatus.APPROVED:
                continue
            count += 1
            if site.host.startswith("*."):
                self._wildcard.setdefault(site.host[1:], []).append(Route(site))  # ".example.com"
            else:
                self._exact.setdefault(site.host, []).append(Route(site))
        for table in (self._exact, self._wildcard):
            for candidates in table.values():
                candidates.sort(key=lambda r: len(r.path_prefix), reverse=True)
        self.size = count

    def route(self, host: str, path: str) -> Route | None:
        """The site for a (lowercase, port-less) host and a path, or None."""
        route = _by_prefix(self._exact.get(host), path)
        if route is not None:
            return route
        dot = host.find(".")
        while dot != -1:  # the longest matching suffix wins: a.b.c → .b.c, then .c
            route = _by_prefix(self._wildcard.get(host[dot:]), path)
            if route is not None:
                return route
            dot = host.find(".", dot + 1)
        return None


def _by_prefix(candidates: list[Route] | None, path: str) -> Route | None:
    if candidates is None:
        return None
    for route in candidates:
        prefix = route.path_prefix
        if not prefix or path == prefix or path.startswith(prefix + "/"):
            return route
    return None


class SiteWatcher:
    """Holds the current `SiteTable`: registry sites plus the config file's."""

    def __init__(
        self, client: RedisClient, static: Iterable[Site] = (), *, refresh: float = 1.0
    ) -> None:
        self._client = client
        self._registry = SiteRegistry(client)
        self._static = list(static)
        self._refresh = refresh
        self._version = -1
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.table = SiteTable(self._static)
        self.ready = asyncio.Event()  # set once the registry has been loaded

    async def start(self) -> None:
        """Load once (errors logged, static sites still served), then watch."""
        await self.reload()
        self._tasks = [asyncio.create_task(self._poll()), asyncio.create_task(self._listen())]

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def reload(self, force: bool = False) -> bool:
        """Rebuild the table if the registry version moved; True if rebuilt."""
        try:
            if not force and await self._registry.version() == self._version:
                return False
            version, sites = await self._registry.load()
        except _REDIS_FAILURES as exc:
            log.warning("site registry unreachable, keeping %d sites: %s", self.table.size, exc)
            return False
        static_keys = {s.key for s in self._static}
        merged = self._static + [s for s in sites if s.key not in static_keys]
        self.table, self._version = SiteTable(merged), version
        self.ready.set()
        log.info("sites loaded: version %d, %d approved", version, self.table.size)
        return True

    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._refresh)
            self._wake.clear()
            await self.reload()

    async def _listen(self) -> None:
        """Wake the poller on every change notification; reconnect when Redis drops."""
        while True:
            conn: Redis | None = None
            try:
                conn = _pubsub_connection(self._client)
                async with conn.pubsub() as pubsub:
                    await pubsub.subscribe(SITES_CHANNEL)
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._wake.set()
            except _REDIS_FAILURES as exc:
                log.debug("site notifications interrupted: %s", exc)
            finally:
                if conn is not None and conn is not self._client:
                    await conn.aclose()
            await asyncio.sleep(self._refresh)


def _pubsub_connection(client: RedisClient) -> Redis:
    """A connection for SUBSCRIBE: on a cluster, a new one to any node (PUBLISH reaches
    all), which the caller closes; otherwise the client itself."""
    if isinstance(client, RedisCluster):
        node = client.get_random_node()
        return Redis(host=node.host, port=int(node.port), **_node_kwargs(client))
    return client


_NODE_KEYS = (
    "username",
    "password",
    "decode_responses",
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "ssl_check_hostname",
)


def _node_kwargs(client: RedisCluster) -> dict[str, Any]:
    """The credentials and TLS of the cluster client, for a connection of our own."""
    given = client.get_connection_kwargs()
    kwargs = {k: given[k] for k in _NODE_KEYS if given.get(k) is not None}
    if "SSL" in getattr(given.get("connection_class"), "__name__", ""):
        kwargs["ssl"] = True
    return kwargs
