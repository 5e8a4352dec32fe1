"""Audit rows written with the change they record, and ``GET /v1/audit`` within scope."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from billing.db import Database
from billing.schema import audit_log, enterprises
from tests.api_framework.conftest import Tokens

T0 = datetime(2024, 5, 1, tzinfo=UTC)


async def audit_rows(db: Database) -> list[dict[str, Any]]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(sa.select(audit_log).order_by(audit_log.c.id))
        return [dict(row) for row in rows.mappings()]


async def add_rows(db: Database, rows: list[tuple[int, str | None, str]]) -> None:
    """(hours after T0, enterprise, action) rows written as if long ago."""
    async with db.begin() as conn:
        await conn.execute(
            audit_log.insert(),
            [
                {
                    "at": T0 + timedelta(hours=h),
                    "actor": "tok_x:ops",
                    "action": action,
                    "enterprise_id": e,
                    "before": None,
                    "after": {"h": h},
                    "reason": "",
                    "request_id": f"r{h}",
                }
                for h, e, action in rows
            ],
        )


async def test_a_write_and_its_audit_row_commit_together(client, ledger, tokens: Tokens):
    response = await client.post(
        "/v1/enterprises/e1/notes",
        json={"text": "hello", "reason": "customer asked"},
        headers={**tokens.auth(tokens.partner1), "X-Request-Id": "req-note-1"},
    )
    assert response.status == 201
    [row] = await audit_rows(ledger)
    assert row["actor"] == f"{tokens.ids['partner1']}:partner:p1"
    assert row["action"] == "note.add"
    assert row["enterprise_id"] == "e1"
    assert row["before"] == {"industry": "retail"}
    assert row["after"] == {"industry": "x", "note": "hello"}
    assert row["reason"] == "customer asked"
    assert row["request_id"] == "req-note-1"
    assert abs(row["at"] - datetime.now(UTC)) < timedelta(minutes=1)


async def test_a_refused_write_leaves_no_audit_row(client, ledger, tokens: Tokens):
    response = await client.post(
        "/v1/enterprises/e1/notes", json={"text": "fail"}, headers=tokens.auth(tokens.ops)
    )
    assert response.status == 409
    assert await audit_rows(ledger) == []
    async with ledger.engine.connect() as conn:
        industry = await conn.scalar(
            sa.select(enterprises.c.industry).where(enterprises.c.id == "e1")
        )
    assert industry == "retail"


async def get_audit(client, token: str, tokens: Tokens, query: str = ""):
    response = await client.get(f"/v1/audit{query}", headers=tokens.auth(token))
    return response.status, await response.json()


def hours(body) -> list[int]:
    return [item["after"]["h"] for item in body["items"]]


@pytest.fixture
async def history(ledger: Database) -> None:
    await add_rows(
        ledger,
        [
            (1, "e1", "a"),
            (2, "e2", "a"),
            (3, None, "token.create"),
            (4, "e3", "a"),
            (5, "e1", "b"),
            (6, "e2", "b"),
        ],
    )


@pytest.mark.usefixtures("history")
@pytest.mark.parametrize(
    ("who", "expected"),
    [
        ("ops", [6, 5, 4, 3, 2, 1]),
        ("partner1", [5, 1]),
        ("merchant1", [5, 1]),
        ("merchant2", [6, 2]),
    ],
)
async def test_each_role_sees_its_scope_newest_first(client, tokens: Tokens, who, expected):
    status, body = await get_audit(client, getattr(tokens, who), tokens)
    assert status == 200
    assert hours(body) == expected


@pytest.mark.usefixtures("history")
async def test_filters(client, tokens: Tokens):
    ops = tokens.ops
    assert hours((await get_audit(client, ops, tokens, "?enterprise_id=e2"))[1]) == [6, 2]
    since = (T0 + timedelta(hours=2)).isoformat().replace("+00:00", "Z")
    until = (T0 + timedelta(hours=5)).isoformat().replace("+00:00", "Z")
    body = (await get_audit(client, ops, tokens, f"?since={since}&until={until}"))[1]
    assert hours(body) == [4, 3, 2]  # since inclusive, until exclusive
    # An offset other than UTC means the same instant; no offset means UTC.
    body = (await get_audit(client, ops, tokens, "?since=2024-05-01T11:00:00%2B08:00"))[1]
    assert hours(body) == [6, 5, 4, 3]
    body = (await get_audit(client, ops, tokens, "?until=2024-05-01T02:00:00"))[1]
    assert hours(body) == [1]
    assert hours((await get_audit(client, ops, tokens, "?limit=2"))[1]) == [6, 5]
    body = (await get_audit(client, tokens.partner1, tokens, "?enterprise_id=e1&limit=1"))[1]
    assert hours(body) == [5]
    item = body["items"][0]
    assert set(item) == {
        "id",
        "at",
        "actor",
        "action",
        "enterprise_id",
        "before",
        "after",
        "reason",
        "request_id",
    }
    assert item["at"] == "2024-05-01T05:00:00Z"


@pytest.mark.usefixtures("history")
@pytest.mark.parametrize(
    ("who", "enterprise"),
    [("partner1", "e2"), ("partner1", "e3"), ("merchant1", "e2"), ("merchant1", "nope")],
)
async def test_another_tenants_enterprise_is_404(client, tokens: Tokens, who, enterprise):
    status, body = await get_audit(
        client, getattr(tokens, who), tokens, f"?enterprise_id={enterprise}"
    )
    assert status == 404
    assert body["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "query",
    [
        "?limit=0",
        "?limit=1001",
        "?limit=x",
        "?since=yesterday",
        "?since=2024-05-02&until=2024-05-01",
        "?enterprise_id=a%20b",
        "?actor=x",
    ],
)
async def test_bad_filters_are_400(client, tokens: Tokens, query):
    status, body = await get_audit(client, tokens.ops, tokens, query)
    assert status == 400
    assert body["error"]["code"] == "invalid_request"
