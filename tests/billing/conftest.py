"""Fixtures of the ledger and business-operation tests, on the suite's ledger fixtures.

``db`` / ``empty_db`` (tests/conftest.py) run each test on SQLite and on PostgreSQL.
``redis`` is an asyncio client of the session's single Redis node, flushed first; ``store``
a `BalanceStore` on it; ``audit`` a `SystemAuditor`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from billing.audit import SystemAuditor
from metering import BalanceStore
from pvgate.embedded import RedisServer
from tests.conftest import single_client


@pytest.fixture
async def redis(redis_node: RedisServer) -> AsyncIterator[Redis]:
    """An asyncio client of the single node, emptied first."""
    redis_node.client().flushall()
    client = single_client(redis_node)
    yield client
    await client.aclose()


@pytest.fixture
def store(redis: Redis) -> BalanceStore:
    return BalanceStore(redis)


@pytest.fixture
def audit() -> SystemAuditor:
    return SystemAuditor("test")
