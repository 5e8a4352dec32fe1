"""Fixtures of the API framework tests: a seeded ledger, tokens, the demo API on a server.

``ledger`` is the suite's ``db`` (tests/conftest.py: SQLite, and PostgreSQL when
``PVGATE_TEST_POSTGRES_URL`` is set) seeded with `seed`; ``sqlite_ledger`` the same on
SQLite only, for tests whose subject does not depend on the backend.  ``make_client``
serves `tests.api_framework.demo` through `create_admin_app` on a loopback port.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import test_utils

from billing.api.app import create_admin_app
from billing.api.auth import create_token
from billing.db import Database
from billing.schema import enterprises, partners
from tests.api_framework import demo


@pytest.fixture
async def ledger(db: Database) -> Database:
    """A fresh, migrated, seeded ledger on each backend."""
    await seed(db)
    return db


@pytest.fixture
async def sqlite_ledger(sqlite_db: Database) -> Database:
    await seed(sqlite_db)
    return sqlite_db


async def seed(db: Database) -> None:
    """Partners p1, p2; enterprises e1 (of p1), e2 (of p2), e3 (direct)."""
    now = datetime.now(UTC)
    async with db.begin() as conn:
        await conn.execute(
            partners.insert(), [{"id": p, "name": p, "created_at": now} for p in ("p1", "p2")]
        )
        await conn.execute(
            enterprises.insert(),
            [
                {
                    "id": e,
                    "id_type": "wecom",
                    "name": e,
                    "industry": "retail",
                    "verified": True,
                    "partner_id": p,
                    "created_at": now,
                    "updated_at": now,
                }
                for e, p in (("e1", "p1"), ("e2", "p2"), ("e3", None))
            ],
        )


@dataclass
class Tokens:
    ops: str
    partner1: str
    merchant1: str
    merchant2: str
    ids: dict[str, str]

    def auth(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


async def make_tokens(db: Database) -> Tokens:
    ids: dict[str, str] = {}
    plain: dict[str, str] = {}
    for name, role in (
        ("ops", "ops"),
        ("partner1", "partner:p1"),
        ("merchant1", "merchant:e1"),
        ("merchant2", "merchant:e2"),
    ):
        ids[name], plain[name] = await create_token(db, role, label=f"test {name}")
    return Tokens(ids=ids, **plain)


@pytest.fixture
async def tokens(ledger: Database) -> Tokens:
    return await make_tokens(ledger)


@pytest.fixture
async def sqlite_tokens(sqlite_ledger: Database) -> Tokens:
    return await make_tokens(sqlite_ledger)


Client = test_utils.TestClient[Any, Any]
ClientFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
async def make_client() -> AsyncIterator[ClientFactory]:
    """``await make_client(db, calls=…, gate=…, **create_admin_app_kwargs)``: the demo API
    on a real server, counting its calls in ``calls`` (a Counter) and holding ``/v1/slow``
    at ``gate``."""
    clients: list[Client] = []

    async def make(
        db: Database,
        *,
        calls: Counter[str] | None = None,
        gate: demo.Gate | None = None,
        **kwargs: Any,
    ) -> Client:
        app = create_admin_app(db, demo.api, **kwargs)
        app[demo.CALLS] = Counter() if calls is None else calls
        app[demo.GATE] = demo.Gate() if gate is None else gate
        client: Client = test_utils.TestClient(test_utils.TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def client(make_client: ClientFactory, ledger: Database) -> Client:
    return await make_client(ledger)


@pytest.fixture
async def sqlite_client(make_client: ClientFactory, sqlite_ledger: Database) -> Client:
    return await make_client(sqlite_ledger)
