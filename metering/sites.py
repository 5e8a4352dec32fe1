"""Sites: which host (or path prefix on a shared host) belongs to which enterprise and origin.

Stored in Redis so that every gateway replica sees a change within a second: the billing
admin API writes through `SiteRegistry.put`, which bumps a version counter and publishes
on a channel; gateways listen and also poll the version (see `gateway.routing`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import orjson

from metering.errors import InvalidSite
from metering.keys import SITES, SITES_CHANNEL, SITES_VERSION, validate_enterprise_id
from metering.scripts import RedisClient

log = logging.getLogger("pvgate.sites")

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOST = re.compile(rf"(\*\.)?{_LABEL}(\.{_LABEL})*")
_PREFIX = re.compile(r"(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*")
_UNSAFE = re.compile(r"[\x00-\x20\x7f-\x9f]")


def _check_origin(origin: str) -> None:
    """An absolute http(s) URL with a host, a port in 1–65535 if any, and no userinfo.

    Whitespace and control characters are refused before parsing: `urlsplit` drops tabs and
    line breaks silently, so the URL it checked would not be the one stored.
    """
    if _UNSAFE.search(origin):
        raise InvalidSite("origin", origin, "whitespace and control characters are not allowed")
    try:
        parts = urlsplit(origin)
    except ValueError as exc:  # an unbalanced IPv6 bracket
        raise InvalidSite("origin", origin, str(exc)) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidSite("origin", origin, "expected an http(s) URL with a host")
    try:
        port = parts.port
    except ValueError:  # not a number, or outside 0–65535
        port = 0
    if port == 0 or (port is None and parts.netloc.endswith(":")):
        raise InvalidSite("origin", origin, "the port must be a number from 1 to 65535")
    if parts.username is not None or parts.password is not None:
        raise InvalidSite("origin", origin, "credentials (user@) are not allowed in an origin")


class SiteStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True, kw_only=True)
class Site:
    """A host (exact, or ``*.suffix``) and optional path prefix served for one enterprise."""

    host: str
    enterprise_id: str
    origin: str
    path_prefix: str = ""
    status: SiteStatus = SiteStatus.PENDING
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _HOST.fullmatch(self.host):
            raise InvalidSite("host", self.host, "expected a lowercase name or *.suffix")
        if not _PREFIX.fullmatch(self.path_prefix):
            raise InvalidSite(
                "path_prefix", self.path_prefix, "expected '' or /segments without a final /"
            )
        validate_enterprise_id(self.enterprise_id)
        _check_origin(self.origin)
        object.__setattr__(self, "status", SiteStatus(self.status))
        for name in ("include", "exclude"):
            globs = getattr(self, name)
            if not all(isinstance(g, str) and g.startswith("/") for g in globs):
                raise InvalidSite(name, globs, "path globs must start with /")
            object.__setattr__(self, name, tuple(globs))

    @property
    def key(self) -> str:
        return self.host + self.path_prefix

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Site:
        data: dict[str, Any] = orjson.loads(raw)
        return cls(**data)


class SiteRegistry:
    """The sites in Redis: one hash, a version counter and a change channel."""

    def __init__(self, client: RedisClient) -> None:
        self._client = client

    async def put(self, site: Site) -> int:
        """Create or replace a site; the new registry version."""
        return await self._change(site.key, "HSET", SITES, site.key, site.to_json())

    async def delete(self, key: str) -> int:
        return await self._change(key, "HDEL", SITES, key)

    async def _change(self, key: str, *command: str | bytes) -> int:
        """The change and the version bump in one MULTI (both keys share ``{sites}``), so
        that version polling never misses a change; then the notification, which only
        wakes the gateways up sooner."""
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.execute_command(*command)
            pipe.incr(SITES_VERSION)
            _, version = await pipe.execute()
        await self._client.publish(SITES_CHANNEL, key)
        return int(version)

    async def version(self) -> int:
        return int(await self._client.get(SITES_VERSION) or 0)

    async def get(self, key: str) -> Site | None:
        raw = await self._client.hget(SITES, key)
        return Site.from_json(raw) if raw else None

    async def load(self) -> tuple[int, list[Site]]:
        """The version and every valid site; a corrupt entry is logged and skipped."""
        version = await self.version()
        sites = []
        for key, raw in (await self._client.hgetall(SITES)).items():
            try:
                sites.append(Site.from_json(raw))
            except (ValueError, TypeError) as exc:
                log.error("site %r in %s is invalid, skipped: %s", key, SITES, exc)
        return version, sites
