"""Connecting to Redis: one URL for a single node, or a list of nodes for Redis Cluster."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from metering.scripts import RedisClient


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisSettings:
    """Where Redis is: ``url`` for one node, or ``cluster_nodes`` (``host:port`` each)."""

    url: str = "redis://127.0.0.1:6379/0"
    cluster_nodes: tuple[str, ...] = ()
    socket_timeout: float = 1.0
    max_connections: int = 64

    async def open(self) -> RedisClient:
        """A client ready for concurrent use.

        A cluster client is initialized here, before any concurrency: redis-py's
        asyncio RedisCluster initializes lazily, and many first commands racing into that
        initialization close each other's connections.
        """
        if self.cluster_nodes:
            nodes = [ClusterNode(*_host_port(n)) for n in self.cluster_nodes]
            cluster = RedisCluster(
                startup_nodes=nodes,
                decode_responses=True,
                socket_timeout=self.socket_timeout,
                max_connections=self.max_connections,
            )
            return await cluster.initialize()
        # A blocking pool waits for a free connection instead of failing the command
        # when more than max_connections are busy.
        pool = BlockingConnectionPool.from_url(
            self.url,
            decode_responses=True,
            socket_timeout=self.socket_timeout,
            max_connections=self.max_connections,
            timeout=self.socket_timeout,
        )
        return Redis(connection_pool=pool)


def _host_port(node: str) -> tuple[str, int]:
    parsed = urlsplit(node if "//" in node else f"//{node}")
    if not parsed.hostname or not parsed.port:
        raise ValueError(f"cluster node {node!r}: expected host:port")
    return parsed.hostname, parsed.port
