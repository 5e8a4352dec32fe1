"""Bad input is answered with a 4xx and changes nothing — never a 500 (DESIGN §6).

Edge values that the route-by-route contract tests do not reach: dates at the ends of what
Python's datetime holds, dates before the epoch, NUL characters in text on PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.admin.conftest import ENT_A, AdminServer, expect

USAGE = f"/v1/enterprises/{ENT_A}/usage"
GIFTS = f"/v1/enterprises/{ENT_A}/gifts"


EDGE_DATES = [
    pytest.param("GET", USAGE, {"since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
                 None, id="usage-since-after-until"),
    pytest.param("GET", "/v1/audit", {"since": "2026-02-01T00:00:00", "until": "2026-01-01"},
                 None, id="audit-since-after-until"),
    pytest.param("POST", GIFTS, None, {"pv": 1, "reason": "r", "expires_at": "2030-01-01T00:00"},
                 id="gift-naive-expiry"),
    pytest.param("GET", USAGE, {"since": "0001-01-01T00:00:00+14:00"}, None,
                 id="usage-since-year-1-east-of-utc"),
    pytest.param("GET", USAGE, {"until": "0001-01-05T00:00:00Z"}, None,
                 id="usage-until-year-1"),
    pytest.param("GET", "/v1/audit", {"since": "9999-12-31T23:59:59-14:00"}, None,
                 id="audit-since-year-9999-west-of-utc"),
    pytest.param("GET", "/v1/audit", {"until": "0001-01-01T00:00:00+14:00"}, None,
                 id="audit-until-year-1-east-of-utc"),
    pytest.param("POST", GIFTS, None,
                 {"pv": 1, "reason": "r", "expires_at": "9999-12-31T23:59:59-14:00"},
                 id="gift-expiry-past-year-9999-in-utc"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "params", "body"), EDGE_DATES)
async def test_edge_dates_are_invalid_requests(
    sqlite_admin: AdminServer,
    method: str,
    path: str,
    params: dict[str, str] | None,
    body: dict[str, Any] | None,
):
    before = await sqlite_admin.audit(ENT_A)
    reply = await sqlite_admin.ops(method, path, body, params=params)
    assert (reply.status, reply.code) == (400, "invalid_request"), reply
    assert await sqlite_admin.audit(ENT_A) == before


@pytest.mark.parametrize(
    "paid_at",
    [
        pytest.param("2026-01-01T08:00:00", id="naive"),
        pytest.param(
            "9999-12-31T00:00:00Z",
            id="expiry-after-year-9999",
        ),
        pytest.param(
            "1969-07-20T20:17:00Z",
            id="before-the-epoch",
        ),
    ],
)
async def test_a_payment_at_an_impossible_time_is_refused_and_books_nothing(
    sqlite_admin: AdminServer, paid_at: str
):
    order = await sqlite_admin.order(paid=False)
    path = f"/v1/orders/{order['id']}/pay"
    reply = await sqlite_admin.ops("POST", path, {"reference": "wx", "paid_at": paid_at})
    assert (reply.status, reply.code) == (400, "invalid_request"), reply
    after = expect(await sqlite_admin.ops("GET", f"/v1/orders/{order['id']}"), 200)
    assert (after["status"], after["packages"]) == ("pending_payment", [])
    # …and a correct confirmation still goes through.
    paid = expect(await sqlite_admin.ops("POST", path, {"reference": "wx"}), 200)
    assert paid["status"] == "paid"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param(
            "POST",
            "/v1/enterprises",
            {"id": "ent-nul", "id_type": "wecom", "name": "A\u0000B", "industry": "retail"},
            id="enterprise-name",
        ),
        pytest.param("POST", GIFTS, {"pv": 1, "reason": "r\u0000"}, id="gift-reason"),
        pytest.param(
            "PATCH", f"/v1/enterprises/{ENT_A}", {"verified": True, "reason": "\u0000"}, id="patch"
        ),
    ],
)
async def test_nul_characters_are_invalid_requests_on_postgresql(
    pg_admin: AdminServer, method: str, path: str, body: dict[str, Any]
):
    reply = await pg_admin.ops(method, path, body)
    assert (reply.status, reply.code) == (400, "invalid_request"), reply
