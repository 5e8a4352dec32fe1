"""Fixtures of the billing control-plane tests: one contract suite, two ledgers.

``db`` is parametrized over SQLite (a file in ``tmp_path``) and PostgreSQL (a database
created per test on the server named by ``PVGATE_TEST_POSTGRES_URL``, dropped with FORCE
afterwards); both are migrated.  The PostgreSQL case skips, saying why, when the variable is
unset or no server answers.  ``redis`` is an asyncio client of the session's single Redis
node, flushed first; ``store`` a `BalanceStore` on it; ``audit`` a `SystemAuditor`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from redis.asyncio import Redis

from billing.audit import SystemAuditor
from billing.db import Database, scratch_database
from metering import BalanceStore
from metering.embedded import RedisServer
from tests.conftest import single_client

POSTGRES_ENV = "PVGATE_TEST_POSTGRES_URL"
SKIP_POSTGRES = f"PostgreSQL tests skipped: {POSTGRES_ENV} not set / unreachable"


async def _sqlite(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(f"sqlite:///{tmp_path}/ledger.db")
    try:
        yield db
    finally:
        await db.dispose()


async def _postgres() -> AsyncIterator[Database]:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"{SKIP_POSTGRES} (unset)")
    scratch = scratch_database(url, "pvgate_t")
    try:
        db = await scratch.__aenter__()
    except (OSError, TimeoutError, sa.exc.DBAPIError) as exc:
        pytest.skip(f"{SKIP_POSTGRES} ({type(exc).__name__}: {exc})")
    try:
        yield db
    finally:
        await scratch.__aexit__(None, None, None)


@pytest.fixture(
    params=[pytest.param("sqlite", id="sqlite"), pytest.param("postgresql", id="postgresql")]
)
async def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A fresh, NOT migrated ledger on each backend."""
    source = _sqlite(tmp_path) if request.param == "sqlite" else _postgres()
    db = await anext(source)
    yield db
    await anext(source, None)


@pytest.fixture
async def db(empty_db: Database) -> Database:
    """A fresh, migrated ledger on each backend."""
    await empty_db.migrate()
    return empty_db


@pytest.fixture
async def redis(redis_node: RedisServer) -> AsyncIterator[Redis]:
    """An asyncio client of the single node, emptied first."""
    redis_node.client().flushall()
    client = single_client(redis_node)
    yield client
    await client.aclose()


@pytest.fixture
def store(redis: Redis) -> BalanceStore:
    return BalanceStore(redis, timeout=5.0)


@pytest.fixture
def audit() -> SystemAuditor:
    return SystemAuditor("test")
