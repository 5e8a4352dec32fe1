"""Fixtures of the admin API tests: a migrated ledger per test, tokens, a real HTTP server.

``ledger`` is parametrized over SQLite (a file per test) and PostgreSQL (a database created
per test on the server named by ``PVGATE_TEST_POSTGRES_URL``, dropped afterwards); the
PostgreSQL case skips, saying why, when that variable is unset or the server does not answer.
``sqlite_ledger`` is for tests whose subject does not depend on the backend.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp import test_utils

from billing.api.app import create_admin_app
from billing.api.auth import create_token
from billing.db import Database, scratch_database
from billing.schema import enterprises, partners
from tests.billing_api import demo

POSTGRES_ENV = "PVGATE_TEST_POSTGRES_URL"


async def _sqlite(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(f"sqlite:///{tmp_path}/l.db")
    await db.migrate()
    yield db
    await db.dispose()


async def _postgres() -> AsyncIterator[Database]:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(
            f"PostgreSQL case: set {POSTGRES_ENV} (e.g. postgresql://postgres@127.0.0.1/test)"
        )
    scratch = scratch_database(url, "pvgate_api")
    try:
        db = await scratch.__aenter__()
    except (OSError, TimeoutError, sa.exc.DBAPIError) as exc:
        pytest.skip(f"PostgreSQL case: no server answers at {POSTGRES_ENV}: {exc!r}")
    try:
        await db.migrate()
        yield db
    finally:
        await scratch.__aexit__(None, None, None)


@pytest.fixture(params=[pytest.param("sqlite", id="sqlite"), pytest.param("pg", id="postgresql")])
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A fresh, migrated, seeded ledger on each backend."""
    source = _sqlite(tmp_path) if request.param == "sqlite" else _postgres()
    db = await anext(source)
    await seed(db)
    yield db
    await anext(source, None)


@pytest.fixture
async def sqlite_ledger(tmp_path: Path) -> AsyncIterator[Database]:
    source = _sqlite(tmp_path)
    db = await anext(source)
    await seed(db)
    yield db
    await anext(source, None)


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
    """``await make_client(db, **create_admin_app_kwargs)``: the demo API on a real server."""
    clients: list[Client] = []

    async def make(db: Database, **kwargs: Any) -> Client:
        kwargs.setdefault("calls", Counter())
        kwargs.setdefault("gate", demo.Gate())
        app = create_admin_app(db, demo.api, **kwargs)
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
