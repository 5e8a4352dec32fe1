"""Connecting to Redis as production runs it: one node, a Cluster, or Sentinel-managed.

    url            one node (``redis://``; ``rediss://`` for TLS; user and password may be
                   in the URL, but `password` below keeps them out of config files)
    cluster_nodes  Redis Cluster: ``host:port`` of some of its nodes
    sentinels      Redis Sentinel: ``host:port`` of each sentinel, the master named
                   ``sentinel_master``, the sentinels' own ``sentinel_password``

and, for each of them, ``username`` / ``password`` (an ACL user, or ``requirepass``) and
TLS — ``tls`` (implied by ``rediss://``), ``tls_ca_file``, and an optional client
certificate ``tls_cert_file`` with ``tls_key_file``.  Every client pvgate makes — the
Meter's own connection, the cluster client, the site-change subscriber, billing's —
takes them from here (docs/architecture.md §3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel

from metering.scripts import RedisClient
from metering.sentinel import FollowingPool, SentinelMaster


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisSettings:
    """Where Redis is and how to reach it safely (see the module docstring)."""

    url: str = "redis://127.0.0.1:6379/0"
    cluster_nodes: tuple[str, ...] = ()
    sentinels: tuple[str, ...] = ()
    sentinel_master: str = ""
    sentinel_password: str = ""
    username: str = ""
    password: str = ""
    tls: bool = False
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    socket_timeout: float = 1.0
    max_connections: int = 64

    def __post_init__(self) -> None:
        if self.cluster_nodes and self.sentinels:
            raise ValueError("cluster_nodes and sentinels: give one of them, not both")
        if self.sentinels and not self.sentinel_master:
            raise ValueError("sentinels need sentinel_master, the name of the master")
        for node in (*self.cluster_nodes, *self.sentinels):
            _host_port(node)
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file go together")

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.url.startswith("rediss://")

    def auth_kwargs(self) -> dict[str, Any]:
        """Credentials and TLS options, as every redis-py client takes them."""
        kwargs: dict[str, Any] = {}
        if self.username:
            kwargs["username"] = self.username
        if self.password:
            kwargs["password"] = self.password
        if self.uses_tls:
            kwargs["ssl"] = True
            if self.tls_ca_file:
                kwargs["ssl_ca_certs"] = self.tls_ca_file
            if self.tls_cert_file:
                kwargs.update(ssl_certfile=self.tls_cert_file, ssl_keyfile=self.tls_key_file)
        return kwargs

    async def open(self) -> RedisClient:
        """A client ready for concurrent use.

        A cluster client is initialized here, before any concurrency: redis-py's
        asyncio RedisCluster initializes lazily, and many first commands racing into that
        initialization close each other's connections.
        """
        common: dict[str, Any] = {"decode_responses": True, "socket_timeout": self.socket_timeout}
        if self.cluster_nodes:
            nodes = [ClusterNode(*_host_port(n)) for n in self.cluster_nodes]
            cluster = RedisCluster(
                startup_nodes=nodes,
                max_connections=self.max_connections,
                **common,
                **self.auth_kwargs(),
            )
            return await cluster.initialize()
        if self.sentinels:
            master: SentinelMaster = self.sentinel().master_for(
                self.sentinel_master,
                redis_class=SentinelMaster,
                connection_pool_class=FollowingPool,
                **common,
            )
            master.follow()  # a failover is followed at once (metering/sentinel.py)
            return master
        if self.uses_tls and not self.url.startswith("rediss://"):
            raise ValueError("tls = true needs a rediss:// url")
        kwargs = {k: v for k, v in self.auth_kwargs().items() if k != "ssl"}  # rediss says so
        # A blocking pool waits for a free connection instead of failing the command
        # when more than max_connections are busy.
        pool = BlockingConnectionPool.from_url(
            self.url,
            max_connections=self.max_connections,
            timeout=self.socket_timeout,
            **common,
            **kwargs,
        )
        return Redis.from_pool(pool)  # closed with the client

    def sentinel(self) -> Sentinel:
        """The Sentinel client: the master found (and found again after a failover)."""
        sentinel_kwargs: dict[str, Any] = {"socket_timeout": self.socket_timeout}
        if self.sentinel_password:
            sentinel_kwargs["password"] = self.sentinel_password
        if self.uses_tls:
            tls = {k: v for k, v in self.auth_kwargs().items() if k.startswith("ssl")}
            sentinel_kwargs.update(tls)
        return Sentinel(  # type: ignore[no-untyped-call]
            [_host_port(s) for s in self.sentinels],
            sentinel_kwargs=sentinel_kwargs,
            socket_timeout=self.socket_timeout,
            **self.auth_kwargs(),
        )


def _host_port(node: str) -> tuple[str, int]:
    parsed = urlsplit(node if "//" in node else f"//{node}")
    if not parsed.hostname or not parsed.port:
        raise ValueError(f"node {node!r}: expected host:port")
    return parsed.hostname, parsed.port
