"""The gateway's settings: one frozen dataclass tree, built by `metering.config`.

Every field can be set in the TOML file (``[section] key = …``) and overridden by
``PVGATE_<SECTION>_<KEY>``; ``examples/gateway.toml`` documents them all.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from metering.config import ConfigError, build, load_file
from metering.connection import RedisSettings
from metering.sites import Site, SiteStatus


def _positive(owner: object, *names: str) -> None:
    for name in names:
        if getattr(owner, name) <= 0:
            raise ValueError(f"{name} must be > 0, got {getattr(owner, name)}")


def split_address(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} {value!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisSection(RedisSettings):
    """Where Redis is (`RedisSettings`), the deadline of a page view's debit, and how many
    replicas must have a debit before its page is served (``WAIT``; 0: none)."""

    timeout_ms: int = 50
    wait_replicas: int = 0

    def __post_init__(self) -> None:
        RedisSettings.__post_init__(self)  # slots dataclasses lose zero-argument super()
        _positive(self, "timeout_ms", "max_connections", "socket_timeout")
        if self.wait_replicas < 0:
            raise ValueError("wait_replicas must be >= 0")
        if self.wait_replicas and self.cluster_nodes:
            raise ValueError("wait_replicas is not supported with cluster_nodes")


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamSection:
    connect_timeout_ms: int = 2000
    read_timeout_ms: int = 30000
    pool_size: int = 256
    pool_size_per_host: int = 64
    keepalive_s: float = 30.0

    def __post_init__(self) -> None:
        _positive(self, "connect_timeout_ms", "read_timeout_ms", "pool_size", "keepalive_s")


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsSection:
    max_header_line: int = 8190
    max_headers: int = 100
    max_head_bytes: int = 65536
    max_body_bytes: int = 10 * 1024 * 1024
    # Bodies up to this are read whole before the origin is contacted (a page view's
    # body may not be larger); larger ones stream.
    request_buffer_bytes: int = 65536
    header_timeout_s: float = 10.0
    body_idle_timeout_s: float = 10.0
    body_timeout_s: float = 120.0
    send_timeout_s: float = 60.0
    shutdown_grace_s: float = 10.0

    def __post_init__(self) -> None:
        _positive(
            self,
            "max_header_line",
            "max_headers",
            "max_head_bytes",
            "max_body_bytes",
            "request_buffer_bytes",
            "header_timeout_s",
            "body_idle_timeout_s",
            "body_timeout_s",
            "send_timeout_s",
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class FailureSection:
    mode: Literal["fail_open", "fail_closed"] = "fail_open"
    # PV an enterprise may be served without a debit while Redis is down (per process).
    allowance_per_enterprise: int = 1000
    breaker_failures: int = 5
    breaker_reset_ms: int = 1000
    # While fail-open views wait to be debited: how often Redis is probed (a PING).
    replay_probe_ms: int = 200

    def __post_init__(self) -> None:
        _positive(self, "breaker_failures", "breaker_reset_ms", "replay_probe_ms")
        if self.allowance_per_enterprise < 0:
            raise ValueError("allowance_per_enterprise must be >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class AdmissionSection:
    """How many requests a worker handles at once; the rest queue, then get 503."""

    max_inflight: int = 512
    max_queued: int = 2048
    queue_timeout_ms: int = 2000

    def __post_init__(self) -> None:
        _positive(self, "max_inflight", "queue_timeout_ms")
        if self.max_queued < 0:
            raise ValueError("max_queued must be >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteEntry:
    """A site listed in the config file (``[[site]]``), beside those in Redis."""

    host: str
    enterprise_id: str
    origin: str
    path_prefix: str = ""
    status: Literal["pending", "approved", "rejected"] = "approved"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def site(self) -> Site:
        return Site(
            host=self.host,
            enterprise_id=self.enterprise_id,
            origin=self.origin,
            path_prefix=self.path_prefix,
            status=SiteStatus(self.status),
            include=self.include,
            exclude=self.exclude,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewaySettings:
    listen: str = "0.0.0.0:8080"
    metrics_listen: str = "127.0.0.1:9100"
    workers: int = 1
    gateway_id: str = ""
    # False turns metering off: a plain reverse proxy (the benchmark's baseline).
    metering: bool = True
    block_status: int = 402
    blocked_cache_ms: int = 500
    usage_flush_ms: int = 1000
    sites_refresh_ms: int = 1000
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # The Server header of the gateway's own responses; "" sends none.
    server_header: str = "pvgate"
    redis: RedisSection = field(default_factory=RedisSection)
    upstream: UpstreamSection = field(default_factory=UpstreamSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    failure: FailureSection = field(default_factory=FailureSection)
    admission: AdmissionSection = field(default_factory=AdmissionSection)
    site: tuple[SiteEntry, ...] = ()

    def __post_init__(self) -> None:
        split_address(self.listen, "listen")
        split_address(self.metrics_listen, "metrics_listen")
        _positive(self, "workers", "blocked_cache_ms", "usage_flush_ms", "sites_refresh_ms")
        if len(self.gateway_id) > 64:
            raise ValueError("gateway_id: at most 64 characters (usage entries carry it)")
        if not 400 <= self.block_status <= 599:
            raise ValueError(f"block_status must be a 4xx or 5xx status, got {self.block_status}")
        sites = [s.site() for s in self.site]  # validates each, naming the bad value
        keys = [s.key for s in sites]
        if len(set(keys)) != len(keys):
            raise ValueError("site: the same host and path_prefix is listed twice")

    def sites(self) -> list[Site]:
        return [s.site() for s in self.site]

    def identity(self) -> str:
        """This process's gateway id: configured name (else host name), pid, boot nonce.

        Billing dedups usage on (gateway id, seq) and seq restarts with the process, so
        the id must never repeat: a restarted container may well get the same pid.
        """
        return f"{self.gateway_id or socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def load_settings(path: str | Path | None, env: Mapping[str, str] | None = None) -> GatewaySettings:
    """Settings from the TOML file (none: embedded defaults) and the environment."""
    data = load_file(path) if path else {}
    return build(GatewaySettings, data, os.environ if env is None else env)


__all__ = ["ConfigError", "GatewaySettings", "load_settings", "split_address"]
