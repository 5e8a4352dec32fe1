"""Fixtures of the alert tests: Redis, a clock, the rig on each ledger, local servers.

``rig`` runs on the suite's ``db`` (SQLite and PostgreSQL), ``sqlite_rig`` on SQLite only;
``make_rig(settings, **kwargs)`` builds more (another worker, other settings) on the same
ledger.  ``receiver`` is a webhook receiver on loopback, ``wecom`` a local WeCom.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from billing.db import Database
from billing.settings import BillingSettings
from metering import BalanceStore
from pvgate.embedded import RedisServer
from tests.alerts.rig import Clock, Rig, alert_settings
from tests.alerts.servers import Receiver, WeCom
from tests.conftest import single_client

RigFactory = Callable[..., Rig]


@pytest.fixture
async def redis(redis_node: RedisServer) -> AsyncIterator[Redis]:
    redis_node.client().flushall()
    client = single_client(redis_node)
    yield client
    await client.aclose()


@pytest.fixture
def store(redis: Redis) -> BalanceStore:
    return BalanceStore(redis)


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def _factory(db: Database, store: BalanceStore, clock: Clock) -> AsyncIterator[RigFactory]:
    made: list[Rig] = []

    def make(settings: BillingSettings | None = None, **kwargs: Any) -> Rig:
        rig = Rig(db, store, clock, settings or alert_settings(), **kwargs)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        await rig.close()


@pytest.fixture
async def make_rig(db: Database, store: BalanceStore, clock: Clock) -> AsyncIterator[RigFactory]:
    async for factory in _factory(db, store, clock):
        yield factory


@pytest.fixture
async def make_sqlite_rig(
    sqlite_db: Database, store: BalanceStore, clock: Clock
) -> AsyncIterator[RigFactory]:
    async for factory in _factory(sqlite_db, store, clock):
        yield factory


@pytest.fixture
def rig(make_rig: RigFactory) -> Rig:
    return make_rig()


@pytest.fixture
def sqlite_rig(make_sqlite_rig: RigFactory) -> Rig:
    return make_sqlite_rig()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    if server.hold is not None:
        server.hold.set()
    await server.stop()


@pytest.fixture
async def wecom() -> AsyncIterator[WeCom]:
    server = WeCom()
    await server.start()
    yield server
    await server.stop()
