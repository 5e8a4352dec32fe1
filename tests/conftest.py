"""Fixtures: real Redis servers started for the session, clients per test and topology;
the billing ledger on SQLite and PostgreSQL.

``db`` is a fresh, migrated ledger, parametrized over SQLite (a file in ``tmp_path``) and
PostgreSQL (a database created per test on the server named by ``PVGATE_TEST_POSTGRES_URL``
with `billing.db.scratch_database`, dropped afterwards); ``empty_db`` the same, not
migrated.  The PostgreSQL case skips, saying why, when the variable is unset or no server
answers.  ``sqlite_db`` and ``pg_db`` are one backend only; `open_ledger` serves fixtures
of a wider scope.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from billing.db import Database, scratch_database
from metering.scripts import RedisClient
from pvgate.embedded import RedisClusterServers, RedisServer, redis_server_binary
from tests.tls import Pki


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


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a certificate for the servers on 127.0.0.1, one for a client (tests/tls.py)."""
    return Pki.make(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def tls_node(pki: Pki) -> Iterator[RedisServer]:
    """A node that speaks TLS only and wants a password."""
    server = RedisServer(security=pki.security())
    _start_tls(server)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tls_cluster(pki: Pki) -> Iterator[RedisClusterServers]:
    """A cluster whose nodes (and bus) speak TLS only and want a password."""
    cluster = RedisClusterServers(security=pki.security())
    _start_tls(cluster)
    yield cluster
    cluster.stop()


def _start_tls(servers: RedisServer | RedisClusterServers) -> None:
    """Start them, or skip saying why when this redis-server was built without TLS."""
    try:
        servers.start()
    except RuntimeError as exc:
        servers.stop()
        if "tls" in str(exc).lower():
            pytest.skip(f"{redis_server_binary()} cannot serve TLS: {str(exc)[-300:]}")
        raise


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


POSTGRES_ENV = "PVGATE_TEST_POSTGRES_URL"
LEDGER_BACKENDS = [pytest.param("sqlite", id="sqlite"), pytest.param("postgresql", id="postgresql")]


@asynccontextmanager
async def open_ledger(
    backend: str, directory: Path, *, migrated: bool = True
) -> AsyncIterator[Database]:
    """A fresh ledger on ``backend`` ("sqlite": a file in ``directory``; "postgresql": a
    scratch database), disposed (and dropped) afterwards; skips when PostgreSQL is absent."""
    if backend == "sqlite":
        db = Database(f"sqlite:///{directory}/ledger.db")
        try:
            if migrated:
                await db.migrate()
            yield db
        finally:
            await db.dispose()
        return
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(
            f"PostgreSQL case: set {POSTGRES_ENV} (e.g. postgresql://postgres@127.0.0.1/test)"
        )
    scratch = scratch_database(url, "pvgate_t")
    try:
        db = await scratch.__aenter__()
    except (OSError, TimeoutError, sa.exc.DBAPIError) as exc:
        pytest.skip(f"PostgreSQL case: no server answers at {POSTGRES_ENV}: {exc!r}")
    try:
        if migrated:
            await db.migrate()
        yield db
    finally:
        await scratch.__aexit__(None, None, None)


@pytest.fixture(params=LEDGER_BACKENDS)
async def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A fresh, NOT migrated ledger on each backend."""
    async with open_ledger(request.param, tmp_path, migrated=False) as db:
        yield db


@pytest.fixture
async def db(empty_db: Database) -> Database:
    """A fresh, migrated ledger on each backend (SQLite, PostgreSQL)."""
    await empty_db.migrate()
    return empty_db


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[Database]:
    """A fresh, migrated ledger on SQLite only, for what does not depend on the backend."""
    async with open_ledger("sqlite", tmp_path) as db:
        yield db


@pytest.fixture
async def pg_db(tmp_path: Path) -> AsyncIterator[Database]:
    """A fresh, migrated ledger on PostgreSQL only (skips, saying why, without a server)."""
    async with open_ledger("postgresql", tmp_path) as db:
        yield db
