"""Buying interop accounts over HTTP (docs/rules.md §1.2, §2, §6, §7): quotes and orders of
``wecom_interop`` in both pricing modes (vector P1), the purchase rules, the licence batch a
payment books, and refunds refused for every role.  SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from billing.interop.tables import licence_batches
from billing.settings import BillingSettings
from tests.admin_api.conftest import ENT_A, ENT_B, AdminFactory, AdminServer, expect

# docs/rules.md §7, vector P1: interop for one year.
P1_GRADUATED = [(1, 5_000), (5, 25_000), (6, 29_000), (200, 805_000), (10_000, 11_705_000)]
P1_VOLUME = [(5, 25_000), (6, 24_000), (200, 800_000), (201, 603_000), (10_000, 10_000_000)]
P1_REFUSED = 10_001


def interop_order(accounts: Any, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "enterprise_id": ENT_A,
        "id_type": "wecom",
        "sku": "wecom_interop",
        "accounts": accounts,
        "agreement_accepted": True,
        **changes,
    }
    return {k: v for k, v in body.items() if v is not ...}


async def check_p1(server: AdminServer, mode: str, vectors: list[tuple[int, int]]) -> None:
    for accounts, fen in vectors:
        quote = expect(
            await server.ops("POST", "/v1/quotes", {"sku": "wecom_interop", "accounts": accounts}),
            200,
        )
        assert (quote["kind"], quote["mode"], quote["total_fen"]) == ("interop", mode, fen)
        assert sum(line["quantity"] for line in quote["lines"]) == accounts
        order = expect(await server.ops("POST", "/v1/orders", interop_order(accounts)), 201)
        assert (order["sku"], order["quantity"], order["amount_fen"]) == (
            "wecom_interop",
            accounts,
            fen,
        )
        assert (order["mode"], order["years"], order["status"]) == (mode, 1, "pending_payment")
        assert [(x["item"], x["amount_fen"]) for x in order["lines"]] == [
            (x["item"], x["amount_fen"]) for x in quote["lines"]
        ]
        assert sum(x["amount_fen"] for x in order["lines"]) == fen
    for path, body in (
        ("/v1/quotes", {"sku": "wecom_interop", "accounts": P1_REFUSED}),
        ("/v1/orders", interop_order(P1_REFUSED)),
        (f"/v1/enterprises/{ENT_A}/interop", _direct(P1_REFUSED)),
    ):
        refused = await server.ops("POST", path, body)
        expect(refused, 422, "interop_quantity_exceeds_self_service")
        assert "10001" in refused.body["error"]["message"].replace(",", "")


def _direct(accounts: int, **changes: Any) -> dict[str, Any]:
    return {"id_type": "wecom", "accounts": accounts, "agreement_accepted": True, **changes}


async def test_p1_interop_vectors_graduated_through_the_api(admin: AdminServer):
    await check_p1(admin, "graduated", P1_GRADUATED)


async def test_p1_interop_vectors_volume_through_the_api(make_admin: AdminFactory):
    server = await make_admin(BillingSettings(interop_pricing="volume"))
    await check_p1(server, "volume", P1_VOLUME)


async def test_years_multiply_the_price_and_the_direct_route_orders_the_same(admin: AdminServer):
    quote = expect(
        await admin.ops("POST", "/v1/quotes", {"sku": "wecom_interop", "accounts": 6, "years": 3}),
        200,
    )
    assert (quote["total_fen"], quote["years"]) == (3 * 29_000, 3)
    direct = expect(
        await admin.ops("POST", f"/v1/enterprises/{ENT_A}/interop", _direct(6, years=3)), 201
    )
    assert (direct["amount_fen"], direct["years"], direct["sku"]) == (87_000, 3, "wecom_interop")
    legacy = expect(await admin.ops("POST", "/v1/quotes", {"kind": "interop", "quantity": 6}), 200)
    assert legacy["total_fen"] == 29_000


@pytest.mark.parametrize(
    ("enterprise", "changes", "code"),
    [
        (ENT_A, {"agreement_accepted": False}, "agreement_not_accepted"),
        (ENT_A, {"voucher": "SPRING10"}, "voucher_not_allowed"),
        ("ent-unverified", {}, "enterprise_not_verified"),
    ],
)
async def test_interop_orders_follow_the_purchase_rules(
    admin: AdminServer, enterprise: str, changes: dict[str, Any], code: str
):
    await admin.register("ent-unverified", verified=False)
    refused = await admin.ops(
        "POST", "/v1/orders", interop_order(5, enterprise_id=enterprise, **changes)
    )
    expect(refused, 422, code)
    direct = await admin.ops("POST", f"/v1/enterprises/{enterprise}/interop", _direct(5, **changes))
    expect(direct, 422, code)
    count = await admin.db.scalar(sa.select(sa.func.count()).select_from(licence_batches))
    assert count == 0


@pytest.mark.parametrize(
    "body",
    [
        interop_order(5, quantity=5),  # an interop order counts accounts
        interop_order(..., quantity=5),
        interop_order(0),
        interop_order(5, years=0),
        {**interop_order(5), "sku": "pv_1m"},  # accounts on a PV order
        {**interop_order(5), "accounts": True},
    ],
)
async def test_malformed_interop_orders_are_invalid_requests(admin: AdminServer, body: Any):
    expect(await admin.ops("POST", "/v1/orders", body), 400, "invalid_request")


async def test_payment_books_one_batch_valid_for_calendar_years(admin: AdminServer):
    order = expect(await admin.ops("POST", "/v1/orders", interop_order(6, years=2)), 201)
    assert order["licence"] is None
    # 2028-02-29T10:00 in Shanghai: two calendar years later is 28 February 2030.
    paid_at = datetime(2028, 2, 29, 2, 0, tzinfo=UTC)
    if paid_at > datetime.now(UTC):
        paid_at = datetime(2024, 2, 29, 2, 0, tzinfo=UTC)
    pay = {"reference": "wx-1", "paid_at": paid_at.isoformat()}
    paid = expect(await admin.ops("POST", f"/v1/orders/{order['id']}/pay", pay), 200)
    again = expect(await admin.ops("POST", f"/v1/orders/{order['id']}/pay", pay), 200)
    licence = paid["licence"]
    assert licence == again["licence"]
    assert (licence["accounts"], licence["years"]) == (6, 2)
    assert datetime.fromisoformat(licence["valid_from"]) == paid_at
    until = datetime.fromisoformat(licence["valid_until"])
    assert until == paid_at.replace(year=paid_at.year + 2, day=28)
    assert paid["packages"] == []  # no PV bucket
    balance = await admin.balance(ENT_A)
    assert order["id"] not in {b["order_id"] for b in balance["buckets"]}
    batches = await admin.db.scalar(sa.select(sa.func.count()).select_from(licence_batches))
    assert batches == 1
    audit = [row for row in await admin.audit(ENT_A) if row["action"] == "order.pay"]
    assert any(row["after"].get("licence_batch", {}).get("id") == licence["id"] for row in audit)


async def test_a_purchase_while_a_batch_is_valid_adds_a_batch(admin: AdminServer):
    first_paid = datetime.now(UTC) - timedelta(days=10)
    for accounts, paid_at in ((3, first_paid), (2, first_paid + timedelta(days=5))):
        order = expect(await admin.ops("POST", "/v1/orders", interop_order(accounts)), 201)
        pay = {"reference": f"wx-{accounts}", "paid_at": paid_at.isoformat()}
        expect(await admin.ops("POST", f"/v1/orders/{order['id']}/pay", pay), 200)
    view = await admin.ok("GET", f"/v1/enterprises/{ENT_A}/interop")
    assert [(b["accounts"], b["active"]) for b in view["batches"]] == [(3, True), (2, True)]
    ends = [datetime.fromisoformat(b["valid_until"]) for b in view["batches"]]
    assert ends[1] - ends[0] == timedelta(days=5)  # neither extends the other
    assert view["active_accounts"] == 3 + 2 + 10  # and the trial's, while it lasts


async def _paid_interop_order(server: AdminServer) -> dict[str, Any]:
    order = expect(await server.ops("POST", "/v1/orders", interop_order(5)), 201)
    paid: dict[str, Any] = expect(
        await server.ops("POST", f"/v1/orders/{order['id']}/pay", {"reference": "wx"}), 200
    )
    return paid


async def test_interop_is_never_refunded_for_any_role(admin: AdminServer):
    paid = await _paid_interop_order(admin)
    unpaid = expect(await admin.ops("POST", "/v1/orders", interop_order(2)), 201)
    tokens = admin.tokens
    for order in (paid, unpaid):
        body = {"order_id": order["id"], "package_ids": [f"{order['id']}.p000"]}
        for token in (tokens.ops, tokens.partner_a, tokens.merchant_a):
            quote = await admin.api.call("POST", "/v1/refunds/quote", token, body)
            expect(quote, 422, "interop_not_refundable")
        for token in (tokens.ops, tokens.merchant_a):
            refund = await admin.api.call("POST", "/v1/refunds", token, body)
            expect(refund, 422, "interop_not_refundable")
        # The partner may not refund at all (docs/architecture.md §6): the role check first.
        expect(await admin.api.call("POST", "/v1/refunds", tokens.partner_a, body), 403)
        # Another tenant cannot even tell the order exists.
        expect(await admin.api.call("POST", "/v1/refunds/quote", tokens.merchant_b, body), 404)
    actions = {row["action"] for row in await admin.audit(ENT_A)}
    assert "refund.execute" not in actions


async def test_another_tenant_cannot_order_for_an_enterprise_it_cannot_see(admin: AdminServer):
    reply = await admin.api.call(
        "POST", f"/v1/enterprises/{ENT_A}/interop", admin.tokens.merchant_b, _direct(1)
    )
    expect(reply, 404, "not_found")
    own = await admin.api.call(
        "POST",
        f"/v1/enterprises/{ENT_B}/interop",
        admin.tokens.merchant_b,
        _direct(1, id_type="qidian"),
    )
    assert expect(own, 201)["enterprise_id"] == ENT_B
