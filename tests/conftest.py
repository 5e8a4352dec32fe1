"""Fixtures: real Redis servers started for the session, clients per test and topology."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from metering.embedded import RedisClusterServers, RedisServer
from metering.scripts import RedisClient


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run long load and soak tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow (load/soak) test: opt in with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def redis_node() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    cluster = RedisClusterServers().start()
    yield cluster
    cluster.stop()


@pytest.fixture
def aof_node() -> Iterator[RedisServer]:
    """A fresh node with AOF (appendfsync always) on disk; tests may kill and restart it."""
    server = RedisServer(aof=True).start()
    yield server
    server.stop()


def single_client(server: RedisServer) -> Redis:
    return Redis(host=server.host, port=server.port, decode_responses=True)


def cluster_client(cluster: RedisClusterServers) -> RedisCluster:
    return RedisCluster(
        startup_nodes=[ClusterNode(h, p) for h, p in cluster.startup_nodes],
        decode_responses=True,
    )


@pytest.fixture(params=["single", "cluster"])
def topology(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def servers(topology: str, request: pytest.FixtureRequest) -> RedisServer | RedisClusterServers:
    """The servers of this test's topology, emptied first."""
    if topology == "single":
        server: RedisServer = request.getfixturevalue("redis_node")
        server.client().flushall()
        return server
    cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
    cluster.flushall()
    return cluster


@pytest.fixture
async def client(servers: RedisServer | RedisClusterServers) -> AsyncIterator[RedisClient]:
    """An asyncio client of this test's topology (parametrized: single node, cluster)."""
    conn: RedisClient
    if isinstance(servers, RedisServer):
        conn = single_client(servers)
    else:
        # Initialized before use: concurrent lazy initialization drops connections.
        conn = await cluster_client(servers).initialize()
    yield conn
    await conn.aclose()
