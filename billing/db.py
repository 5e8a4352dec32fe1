"""The ledger database: an async engine for SQLite (default) or PostgreSQL, chosen by URL.

``sqlite:///ledger.db`` and ``postgresql://user@host/db`` are accepted as given; the
async drivers (aiosqlite, asyncpg) are filled in here.  `migrate` applies the Alembic
migrations; `Database.check_schema` refuses to run on an out-of-date schema.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from billing.errors import BillingError
from metering.config import ConfigError


class SchemaOutdated(BillingError, ConfigError):
    """The ledger is not at this version's schema; the message names ``pvgate migrate``
    (a ConfigError: the CLI reports it in one line, as a setting at fault)."""

    code = "schema_outdated"
    http_status = 503


def async_url(url: str) -> str:
    """The URL with its async driver: sqlite → aiosqlite, postgresql → asyncpg."""
    for plain, driver in (
        ("sqlite://", "sqlite+aiosqlite://"),
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", "billing:migrations")
    config.set_main_option("sqlalchemy.url", async_url(url))
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def migrate(url: str) -> None:
    """Apply every migration (``pvgate migrate``); safe to run again."""
    command.upgrade(alembic_config(url), "head")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers work while the consumer writes; busy_timeout queues writers
    # instead of failing them at once.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


@asynccontextmanager
async def scratch_database(server_url: str, prefix: str) -> AsyncIterator[Database]:
    """A new, empty PostgreSQL database on ``server_url``'s server, dropped afterwards.

    For tests and benchmarks that need a database of their own; raises (OSError,
    TimeoutError, DBAPIError) when the server cannot make one.
    """
    admin = create_async_engine(async_url(server_url), isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    try:
        async with asyncio.timeout(10), admin.connect() as conn:
            await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        db = Database(make_url(server_url).set(database=name).render_as_string(hide_password=False))
        try:
            yield db
        finally:
            await db.dispose()
            async with admin.connect() as conn:
                await conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: AsyncEngine = create_async_engine(async_url(url), pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """One transaction: committed on success, rolled back on any exception."""
        async with self.engine.begin() as conn:
            yield conn

    async def current_revision(self) -> str | None:
        async with self.engine.connect() as conn:
            return await conn.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_revision()
            )

    async def check_schema(self) -> None:
        current, head = await self.current_revision(), head_revision()
        if current != head:
            raise SchemaOutdated(
                f"ledger schema is at {current or 'nothing'}, the code needs {head}: "
                "run `pvgate migrate`"
            )

    async def migrate(self) -> None:
        await asyncio.to_thread(migrate, self.url)

    async def dispose(self) -> None:
        await self.engine.dispose()

    async def scalar(self, statement: sa.Executable) -> Any:
        async with self.engine.connect() as conn:
            return (await conn.execute(statement)).scalar()
