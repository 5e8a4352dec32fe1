"""The ledger schema on both backends: migrations, the schema check, UTC times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from billing.db import Database, SchemaOutdated, head_revision
from billing.schema import metadata, partners


def _inspect(sync_conn: Any) -> dict[str, set[str]]:
    inspector = sa.inspect(sync_conn)
    return {t: {c["name"] for c in inspector.get_columns(t)} for t in inspector.get_table_names()}


async def tables(db: Database) -> dict[str, set[str]]:
    async with db.engine.connect() as conn:
        return await conn.run_sync(_inspect)


async def test_migrate_creates_every_table_and_column(db: Database):
    found = await tables(db)
    expected = {t.name: {c.name for c in t.columns} for t in metadata.sorted_tables}
    assert set(found) == set(expected) | {"alembic_version"}
    for name, columns in expected.items():
        assert found[name] == columns, name
    assert await db.current_revision() == head_revision()


async def test_migrate_twice_changes_nothing(db: Database):
    async with db.begin() as conn:
        await conn.execute(
            partners.insert().values(id="p1", name="P", created_at=datetime.now(UTC))
        )
    before = await tables(db)
    await db.migrate()
    assert await tables(db) == before
    assert await db.current_revision() == head_revision()
    assert await db.scalar(sa.select(sa.func.count()).select_from(partners)) == 1
    await db.check_schema()


async def test_check_schema_refuses_an_empty_database_then_passes(empty_db: Database):
    with pytest.raises(SchemaOutdated) as info:
        await empty_db.check_schema()
    assert info.value.code == "schema_outdated"
    assert "pvgate migrate" in info.value.message
    await empty_db.migrate()
    await empty_db.check_schema()


async def test_times_round_trip_as_aware_utc(db: Database):
    shanghai = timezone(timedelta(hours=8))
    written = datetime(2027, 1, 31, 1, 30, 15, 123456, tzinfo=shanghai)
    async with db.begin() as conn:
        await conn.execute(partners.insert().values(id="p1", name="P", created_at=written))
    read = await db.scalar(sa.select(partners.c.created_at).where(partners.c.id == "p1"))
    assert read == written
    assert read.tzinfo is not None
    assert read.utcoffset() == timedelta(0)
    assert read == datetime(2027, 1, 30, 17, 30, 15, 123456, tzinfo=UTC)
    # Ordering in SQL follows the instant, not the wall clock it was written in.
    async with db.begin() as conn:
        await conn.execute(
            partners.insert().values(
                id="p2", name="Q", created_at=datetime(2027, 1, 30, 18, 0, tzinfo=UTC)
            )
        )
    first = await db.scalar(sa.select(partners.c.id).order_by(partners.c.created_at).limit(1))
    assert first == "p1"


async def test_naive_times_are_refused(db: Database):
    with pytest.raises(sa.exc.StatementError) as info:
        async with db.begin() as conn:
            await conn.execute(
                partners.insert().values(id="p1", name="P", created_at=datetime(2027, 1, 1))
            )
    assert isinstance(info.value.orig, ValueError)
    assert await db.scalar(sa.select(sa.func.count()).select_from(partners)) == 0


def _differences(sync_conn: Any) -> list[Any]:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    context = MigrationContext.configure(sync_conn, opts={"compare_type": False})
    return list(compare_metadata(context, metadata))


async def test_the_migrations_make_exactly_the_schema_the_code_declares(db: Database):
    """Tables, columns, indexes, keys: what `alembic revision --autogenerate` would write
    after the last migration is nothing (a new index in billing/schema.py needs one)."""
    async with db.engine.connect() as conn:
        found = await conn.run_sync(_differences)
    assert found == []
