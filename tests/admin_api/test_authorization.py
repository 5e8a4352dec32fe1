"""The authorization matrix of the admin API (docs/architecture.md §6): every route × every caller.

The target of every call is partner p1's enterprise ent-a (or one of its orders, gifts,
sites).  Callers: ops; partner p1 (own) and p2 (other); merchant ent-a (own) and ent-b
(other); no token; a well-formed token that does not exist.  Expected: 401 without a valid
token; 403 for a role the route never allows; 404 for another tenant's object (the same
answer as for a missing one); the route's success status — or, for a partner naming
another partner, its business refusal — otherwise.

All of it runs against one seeded app for the module (the matrix is 231 calls); each case
prepares, as ops, fresh objects for state-changing calls (a pending order to pay, a paid one
to invoice or refund…), so the cases do not depend on each other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import sqlalchemy as sa

from billing.api.app import ADMIN_API
from billing.schema import audit_log, enterprises, sites
from billing.settings import AlertsSection, BillingSettings
from pvgate.embedded import RedisServer
from tests.admin_api.calls import PREPARE, Call, fresh, seed_of
from tests.admin_api.conftest import (
    ENT_A,
    ENT_B,
    PARTNER_A,
    SITE_A,
    AdminServer,
    Reply,
    expect,
    running_admin,
)
from tests.conftest import open_ledger

pytestmark = pytest.mark.asyncio(loop_scope="module")

CALLERS = (
    "ops",
    "partner-own",
    "partner-other",
    "merchant-own",
    "merchant-other",
    "no-token",
    "bad-token",
)
TOKEN_OF = {
    "ops": "ops",
    "partner-own": "partner_a",
    "partner-other": "partner_b",
    "merchant-own": "merchant_a",
    "merchant-other": "merchant_b",
}
UNKNOWN_TOKEN = "pvg_" + "A" * 43  # well-formed, never issued
ERROR_CODES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found"}
# Alert test messages go to 127.0.0.1:9 (refused at once; see calls.py).
MATRIX_SETTINGS = BillingSettings(alerts=AlertsSection(allow_addresses=("127.0.0.1",)))

# Expected status per caller; no-token and bad-token are 401 on every route.  Quotes have
# no tenant; GET /v1/sites?enterprise_id=ent-a answers another tenant an empty 200 list
# (the body check below proves nothing of ent-a's leaks); a partner registering for
# another partner is a 400.
#                                                       ops   p-own p-oth m-own m-oth
MATRIX: dict[tuple[str, str], tuple[int, int, int, int, int]] = {
    ("GET", "/v1/audit"):                                (200,  200,  404,  200,  404),
    ("POST", "/v1/enterprises"):                         (201,  201,  400,  403,  403),
    ("GET", "/v1/enterprises/{enterprise_id}"):          (200,  200,  404,  200,  404),
    ("PATCH", "/v1/enterprises/{enterprise_id}"):        (200,  403,  403,  403,  403),
    ("GET", "/v1/enterprises/{enterprise_id}/balance"):  (200,  200,  404,  200,  404),
    ("POST", "/v1/enterprises/{enterprise_id}/gifts"):   (201,  403,  403,  403,  403),
    ("POST", "/v1/enterprises/{enterprise_id}/adjustments"): (201, 403, 403,  403,  403),
    ("GET", "/v1/enterprises/{enterprise_id}/usage"):    (200,  200,  404,  200,  404),
    ("POST", "/v1/quotes"):                              (200,  200,  200,  200,  200),
    ("POST", "/v1/orders"):                              (201,  201,  404,  201,  404),
    ("GET", "/v1/orders/{order_id}"):                    (200,  200,  404,  200,  404),
    ("POST", "/v1/orders/{order_id}/pay"):               (200,  403,  403,  403,  403),
    ("POST", "/v1/orders/{order_id}/invoice"):           (200,  403,  403,  403,  403),
    ("POST", "/v1/orders/{order_id}/invoice/return"):    (200,  403,  403,  403,  403),
    ("POST", "/v1/refunds/quote"):                       (200,  200,  404,  200,  404),
    ("POST", "/v1/refunds"):                             (201,  403,  403,  201,  404),
    ("PUT", "/v1/sites/{host}"):                         (200,  200,  404,  200,  404),
    ("GET", "/v1/sites"):                                (200,  200,  200,  200,  200),
    ("POST", "/v1/sites/{host}/review"):                 (200,  403,  403,  403,  403),
    ("GET", "/v1/enterprises/{enterprise_id}/interop"):  (200,  200,  404,  200,  404),
    ("POST", "/v1/enterprises/{enterprise_id}/interop"): (201,  201,  404,  201,  404),
    ("PATCH", "/v1/enterprises/{enterprise_id}/interop"): (200, 403,  403,  403,  403),
    ("POST", "/v1/enterprises/{enterprise_id}/interop/members"): (201, 201, 404, 201, 404),
    ("DELETE", "/v1/enterprises/{enterprise_id}/interop/members/{userid}"):
                                                         (200,  200,  404,  200,  404),
    ("PUT", "/v1/enterprises/{enterprise_id}/wecom"):    (200,  200,  404,  200,  404),
    ("GET", "/v1/enterprises/{enterprise_id}/wecom"):    (200,  200,  404,  200,  404),
    ("GET", "/v1/enterprises/{enterprise_id}/wecom/events"): (200, 200, 404,  200,  404),
    ("GET", "/v1/enterprises/{enterprise_id}/alerts"):   (200,  200,  404,  200,  404),
    ("PUT", "/v1/enterprises/{enterprise_id}/alerts"):   (200,  200,  404,  200,  404),
    ("POST", "/v1/enterprises/{enterprise_id}/alerts/secret"): (200, 200, 404, 200, 404),
    ("GET", "/v1/enterprises/{enterprise_id}/alerts/events"): (200, 200, 404, 200,  404),
    ("POST", "/v1/enterprises/{enterprise_id}/alerts/test"): (200, 200, 404,  200,  404),
    ("POST", "/v1/alerts/deliveries/{delivery_id}/retry"): (200, 403,  403,  403,  403),
}  # fmt: skip

# Every route of docs/architecture.md §6.
DESIGN_ROUTES = {
    *MATRIX,
    ("PUT", "/v1/enterprises/{enterprise_id}/alerts"),
    ("GET", "/v1/enterprises/{enterprise_id}/interop"),
    ("POST", "/v1/enterprises/{enterprise_id}/interop"),
}


def _expected(route: tuple[str, str], caller: str) -> int:
    if caller in ("no-token", "bad-token"):
        return 401
    return MATRIX[route][CALLERS.index(caller)]


def _cases() -> list[Any]:
    cases = []
    for route in MATRIX:
        for caller in CALLERS:
            status = _expected(route, caller)
            case_id = f"{route[0]} {route[1]} as {caller} -> {status}"
            cases.append(pytest.param(route, caller, status, id=case_id))
    return cases


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(
    tmp_path_factory: pytest.TempPathFactory, redis_node: RedisServer
) -> AsyncIterator[AdminServer]:
    """One seeded app for the whole matrix (SQLite)."""
    async with (
        open_ledger("sqlite", tmp_path_factory.mktemp("matrix")) as db,
        running_admin(db, redis_node, MATRIX_SETTINGS) as server,
    ):
        yield server


def _token(server: AdminServer, caller: str) -> str | None:
    if caller == "no-token":
        return None
    if caller == "bad-token":
        return UNKNOWN_TOKEN
    token: str = getattr(server.tokens, TOKEN_OF[caller])
    return token


async def _audit_rows(server: AdminServer) -> int:
    count = await server.db.scalar(sa.select(sa.func.count()).select_from(audit_log))
    return int(count)


def _check_body(reply: Reply, call: Call, caller: str) -> None:
    if reply.status >= 400:
        body = reply.body
        assert set(body) == {"error"}, reply
        assert set(body["error"]) == {"code", "message"}, reply
        if reply.status in ERROR_CODES:
            assert reply.code == ERROR_CODES[reply.status], reply
        if reply.status == 401:
            assert reply.headers["WWW-Authenticate"].startswith("Bearer"), reply.headers
        return
    if call.marker is None:
        return
    if caller.endswith("-other"):
        assert call.marker.encode() not in reply.raw, f"{caller} sees ent-a data: {reply}"
    else:
        assert call.marker.encode() in reply.raw, f"{caller} misses its own data: {reply}"


@pytest.mark.parametrize(("route", "caller", "status"), _cases())
async def test_matrix(shared: AdminServer, route: tuple[str, str], caller: str, status: int):
    call = await PREPARE[route](shared)
    before = await _audit_rows(shared)
    reply = await shared.api.call(
        call.method, call.path, _token(shared, caller), call.json, params=call.params
    )
    assert reply.status == status, f"{caller} {call.method} {call.path}: {reply}"
    _check_body(reply, call, caller)
    written = await _audit_rows(shared) - before
    if reply.status >= 400:
        assert written == 0, f"a refused call wrote {written} audit rows"
    elif call.mutation:
        assert written >= 1, f"{call.method} {call.path} changed state without an audit row"


async def test_matrix_covers_every_served_route(shared: AdminServer):
    served = {(r.method, r.path) for r in shared.app[ADMIN_API].routes}
    assert served == set(MATRIX), (
        f"routes without a matrix row: {sorted(served - set(MATRIX))}; "
        f"matrix rows without a route: {sorted(set(MATRIX) - served)}"
    )
    assert set(PREPARE) == set(MATRIX)


async def test_every_design_route_is_served(shared: AdminServer):
    served = {(r.method, r.path) for r in shared.app[ADMIN_API].routes}
    assert sorted(DESIGN_ROUTES - served) == []


async def test_other_tenant_is_indistinguishable_from_missing(shared: AdminServer):
    token = shared.tokens.merchant_b
    order_a = seed_of(shared).order_a["id"]
    for real, missing in (
        (f"/v1/enterprises/{ENT_A}", "/v1/enterprises/ent-nope"),
        (f"/v1/enterprises/{ENT_A}/balance", "/v1/enterprises/ent-nope/balance"),
        (f"/v1/orders/{order_a}", "/v1/orders/ord_nope"),
    ):
        hidden = await shared.api.call("GET", real, token)
        absent = await shared.api.call("GET", missing, token)
        assert (hidden.status, hidden.code) == (absent.status, absent.code) == (404, "not_found")
        shape = hidden.body["error"]["message"].replace(ENT_A, "X").replace(order_a, "X")
        assert shape == absent.body["error"]["message"].replace("ent-nope", "X").replace(
            "ord_nope", "X"
        )


async def test_a_partner_registers_only_unverified_enterprises_of_its_own(shared: AdminServer):
    new = fresh("ent-p")
    body = {"id": new, "id_type": "qidian", "name": "P Ltd", "industry": "retail"}
    created = expect(
        await shared.api.call(
            "POST", "/v1/enterprises", shared.tokens.partner_a, {**body, "verified": True}
        ),
        201,
    )
    assert (created["partner_id"], created["verified"]) == (PARTNER_A, False)
    # The other partner cannot see it; its own merchant token would (scope by partner).
    hidden = await shared.api.call("GET", f"/v1/enterprises/{new}", shared.tokens.partner_b)
    expect(hidden, 404, "not_found")


async def test_another_tenant_cannot_take_over_a_site(shared: AdminServer):
    hijack = {"enterprise_id": ENT_B, "origin": "http://127.0.0.1:1/evil"}
    for token in (shared.tokens.merchant_b, shared.tokens.partner_b):
        reply = await shared.api.call("PUT", f"/v1/sites/{SITE_A}", token, hijack)
        expect(reply, 404, "not_found")
    async with shared.db.engine.connect() as conn:
        owner = await conn.scalar(sa.select(sites.c.enterprise_id).where(sites.c.key == SITE_A))
    assert owner == ENT_A


async def test_lists_are_scoped_to_the_tenant(shared: AdminServer):
    async with shared.db.engine.connect() as conn:
        of_p2 = set(
            (
                await conn.execute(
                    sa.select(enterprises.c.id).where(enterprises.c.partner_id == "p2")
                )
            ).scalars()
        )
    assert ENT_B in of_p2
    for token, mine, theirs, scope in (
        (shared.tokens.merchant_a, SITE_A, "shop-b.test", {ENT_A}),
        (shared.tokens.partner_b, "shop-b.test", SITE_A, of_p2),
    ):
        listed = expect(await shared.api.call("GET", "/v1/sites", token), 200)
        keys = {item["key"] for item in listed["items"]}
        assert mine in keys, keys
        assert theirs not in keys, keys
        audit = expect(await shared.api.call("GET", "/v1/audit?limit=1000", token), 200)
        seen = {row["enterprise_id"] for row in audit["items"]}
        assert seen, "no audit rows in scope"
        assert seen <= scope, seen
