"""Bad input is answered with a 4xx and changes nothing — never a 500 (docs/architecture.md §6).

Edge values that the route-by-route contract tests do not reach: dates at the ends of what
Python's datetime holds, dates before the epoch; numbers and booleans of another JSON type
(``true`` for a PV count, ``"100"`` for one, ``"yes"`` for a flag) and query integers that
are not plain digits; control characters — NUL first — in every free-text field, refused
alike on SQLite and PostgreSQL; site origins that are no servable http(s) URL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pytest

from billing.schema import sites
from tests.admin_api.conftest import DEAD_ORIGIN, ENT_A, SITE_A, AdminServer, Reply, expect

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


def refused(reply: Reply, field: str) -> str:
    """Assert a 400 invalid_request naming ``field`` first; its message."""
    assert (reply.status, reply.code) == (400, "invalid_request"), reply
    message: str = reply.body["error"]["message"]
    assert message.startswith(f"{field}:"), message
    return message


def _enterprise(**fields: Any) -> dict[str, Any]:
    return {"id": "ent-new", "id_type": "wecom", "name": "New Ltd", "industry": "retail", **fields}


def _order(**fields: Any) -> dict[str, Any]:
    body = {"enterprise_id": ENT_A, "id_type": "wecom", "sku": "pv_1m", "quantity": 1}
    return {**body, "agreement_accepted": True, **fields}


async def test_numbers_and_booleans_of_another_json_type_are_refused(admin: AdminServer):
    assert admin.seed is not None
    gift = admin.seed.gift_a["id"]
    patch = f"/v1/enterprises/{ENT_A}"
    adjust = f"/v1/enterprises/{ENT_A}/adjustments"
    cases: list[tuple[str, str, dict[str, Any], str]] = [
        ("POST", GIFTS, {"pv": True, "reason": "r"}, "body.pv"),
        ("POST", GIFTS, {"pv": "100", "reason": "r"}, "body.pv"),
        ("POST", GIFTS, {"pv": 100.0, "reason": "r"}, "body.pv"),
        ("POST", "/v1/enterprises", _enterprise(verified="yes"), "body.verified"),
        ("POST", "/v1/enterprises", _enterprise(verified=1), "body.verified"),
        ("PATCH", patch, {"suspended": "true", "reason": "r"}, "body.suspended"),
        ("PATCH", patch, {"flagged_abuse": 0, "reason": "r"}, "body.flagged_abuse"),
        ("POST", adjust, {"bucket_id": gift, "delta_pv": "5", "reason": "r"}, "body.delta_pv"),
        ("POST", adjust, {"bucket_id": gift, "delta_pv": True, "reason": "r"}, "body.delta_pv"),
        ("POST", "/v1/quotes", {"sku": "pv_1m", "quantity": True}, "body.quantity"),
        ("POST", "/v1/quotes", {"sku": "pv_1m", "quantity": 1, "years": "2"}, "body.years"),
        ("POST", "/v1/orders", _order(quantity="1"), "body.quantity"),
        ("POST", "/v1/orders", _order(agreement_accepted="true"), "body.agreement_accepted"),
    ]
    before = (await admin.audit(ENT_A), await admin.balance(ENT_A))
    for method, path, body, field in cases:
        message = refused(await admin.ops(method, path, body), field)
        assert "valid" in message, message  # "Input should be a valid integer/boolean"
    assert (await admin.audit(ENT_A), await admin.balance(ENT_A)) == before
    # The same requests with the right types go through.
    expect(await admin.ops("POST", GIFTS, {"pv": 100, "reason": "r"}), 201)
    expect(await admin.ops("PATCH", patch, {"suspended": False, "reason": "r"}), 200)
    expect(await admin.ops("POST", "/v1/quotes", {"sku": "pv_1m", "quantity": 2}), 200)


@pytest.mark.parametrize(
    "limit", ["1.5", "1.0", "true", "+5", "1_000", " 5", "5 ", "0x10", "1e2", "\uff15", ""]
)
async def test_a_query_integer_is_plain_decimal_digits(sqlite_admin: AdminServer, limit: str):
    refused(await sqlite_admin.ops("GET", "/v1/audit", params={"limit": limit}), "query.limit")


async def test_query_integers_in_digits_are_read_as_numbers(admin: AdminServer):
    for limit, count in (("3", 3), ("007", 7)):
        page = expect(await admin.ops("GET", "/v1/audit", params={"limit": limit}), 200)
        assert len(page["items"]) == count
    refused(await admin.ops("GET", "/v1/audit", params={"limit": "0"}), "query.limit")
    refused(await admin.ops("GET", "/v1/audit?limit=2&limit=3"), "query.limit")


# NUL, C0 (tab and line breaks included), DEL, C1.
CONTROL = ["\x00", "\t", "\n", "\r", "\x1b", "\x7f", "\x85", "\x9f"]


def _text_cases(admin: AdminServer, unpaid: str, bad: str) -> list[tuple[str, str, Any, str]]:
    """Every free-text field of the API, with ``bad`` in it: (method, path, body, field)."""
    assert admin.seed is not None
    order = admin.seed.order_a["id"]
    gift = admin.seed.gift_a["id"]
    site = {"enterprise_id": ENT_A, "origin": DEAD_ORIGIN}
    review = {"decision": "approve", "note": "ok"}
    return [
        ("POST", "/v1/enterprises", _enterprise(name=f"A{bad}B"), "body.name"),
        ("POST", "/v1/enterprises", _enterprise(industry=f"retail{bad}"), "body.industry"),
        ("PATCH", f"/v1/enterprises/{ENT_A}", {"verified": True, "reason": bad}, "body.reason"),
        ("POST", GIFTS, {"pv": 1, "reason": f"r{bad}"}, "body.reason"),
        ("POST", f"/v1/enterprises/{ENT_A}/adjustments",
         {"bucket_id": gift, "delta_pv": 1, "reason": bad}, "body.reason"),
        ("POST", "/v1/quotes", {"sku": f"pv_1m{bad}", "quantity": 1}, "body.sku"),
        ("POST", "/v1/orders", _order(sku=f"pv_1m{bad}"), "body.sku"),
        ("POST", "/v1/orders", _order(voucher=f"V{bad}1"), "body.voucher"),
        ("POST", f"/v1/orders/{unpaid}/pay", {"reference": f"wx{bad}"}, "body.reference"),
        ("POST", f"/v1/orders/{order}/invoice", {"number": f"F{bad}1"}, "body.number"),
        ("POST", f"/v1/orders/{order}/invoice/return", {"number": f"F{bad}1"}, "body.number"),
        ("PUT", "/v1/sites/new.test", {**site, "origin": f"{DEAD_ORIGIN}/{bad}"}, "body.origin"),
        ("PUT", "/v1/sites/new.test", {**site, "path_prefix": f"/a{bad}"}, "body.path_prefix"),
        ("PUT", "/v1/sites/new.test", {**site, "include": [f"/a{bad}"]}, "body.include.0"),
        ("PUT", "/v1/sites/new.test", {**site, "exclude": ["/x", f"/{bad}"]}, "body.exclude.1"),
        ("PUT", f"/v1/sites/new{quote(bad)}.test", site, "path.host"),
        ("POST", f"/v1/sites/{SITE_A}/review", {**review, "note": f"ok{bad}"}, "body.note"),
        ("POST", f"/v1/sites/{SITE_A}/review", {**review, "path_prefix": bad}, "body.path_prefix"),
    ]  # fmt: skip


async def test_control_characters_in_any_text_field_are_refused_naming_it(admin: AdminServer):
    unpaid = (await admin.order(paid=False))["id"]
    before = await admin.audit(ENT_A)
    fields = len(_text_cases(admin, unpaid, ""))
    for i in range(fields):  # NUL in every field, and each other character in some
        for bad in (CONTROL[0], CONTROL[1 + i % (len(CONTROL) - 1)]):
            method, path, body, field = _text_cases(admin, unpaid, bad)[i]
            message = refused(await admin.ops(method, path, body), field)
            assert "control characters" in message, (repr(bad), message)
    assert await admin.audit(ENT_A) == before
    assert (await admin.ok("GET", f"/v1/orders/{unpaid}"))["status"] == "pending_payment"
    # Text itself is welcome, in any script.
    created = await admin.ok(
        "POST", "/v1/enterprises", _enterprise(name="Café 商户 — Ltd", industry="零售"), 201
    )
    assert (created["name"], created["industry"]) == ("Café 商户 — Ltd", "零售")


ORIGINS = [
    ("http://127.0.0.1:99999", "port"),
    ("http://127.0.0.1:0", "port"),
    ("http://127.0.0.1:http", "port"),
    ("http://127.0.0.1:/x", "port"),
    ("http://ops:secret@127.0.0.1:9", "credentials"),
    ("http://ops@127.0.0.1:9", "credentials"),
    ("ftp://127.0.0.1/", "http(s)"),
    ("javascript:alert(1)", "http(s)"),
    ("http:///path-only", "http(s)"),
    ("//127.0.0.1:9/", "http(s)"),
    ("http://[::1/", "IPv6"),
    ("http://127.0.0.1:9/a b", "whitespace"),
]


async def test_an_origin_that_cannot_be_served_is_refused_naming_origin(admin: AdminServer):
    for origin, why in ORIGINS:
        body = {"enterprise_id": ENT_A, "origin": origin}
        message = refused(await admin.ops("PUT", "/v1/sites/bad-origin.test", body), "origin")
        assert why in message, (origin, message)
    listed = await admin.ok("GET", f"/v1/sites?enterprise_id={ENT_A}")
    assert "bad-origin.test" not in {item["key"] for item in listed["items"]}


async def test_origins_at_the_ends_of_the_port_range_are_accepted(sqlite_admin: AdminServer):
    for port in (1, 65535):
        origin = f"http://127.0.0.1:{port}/landing"
        site = await sqlite_admin.put_site(f"port{port}.test", origin=origin)
        assert site["origin"] == origin


async def test_a_site_stored_before_the_origin_rules_is_not_approved_but_must_be_put_again(
    sqlite_admin: AdminServer,
):
    """A port the old check let through: review refuses it (409) rather than fail (500)."""
    definition = {"host": "old.test", "path_prefix": "", "origin": "http://127.0.0.1:99999",
                  "include": [], "exclude": []}  # fmt: skip
    row = {"key": "old.test", "enterprise_id": ENT_A, "definition": definition,
           "status": "pending", "review_note": "", "updated_at": datetime.now(UTC)}  # fmt: skip
    async with sqlite_admin.db.begin() as conn:
        await conn.execute(sites.insert().values(**row))
    review = {"decision": "approve", "note": "looks fine"}
    reply = await sqlite_admin.ops("POST", "/v1/sites/old.test/review", review)
    assert (reply.status, reply.code) == (409, "conflict"), reply
    assert "PUT it again" in reply.body["error"]["message"]
    listed = await sqlite_admin.ok("GET", f"/v1/sites?enterprise_id={ENT_A}")
    assert {i["key"]: i["status"] for i in listed["items"]}["old.test"] == "pending"
