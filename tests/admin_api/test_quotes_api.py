"""Quotes over HTTP (docs/rules.md §7, vector P1) against the full admin app, on SQLite:
PV packages, interop accounts in either pricing mode, and the refused quotes.
"""

from __future__ import annotations

from billing.settings import BillingSettings
from tests.admin_api.conftest import AdminFactory, AdminServer, expect

P1_PACKAGES = [("pv_1m", 1, 3_000_000, 1_000_000), ("pv_3m", 2, 18_000_000, 6_000_000)]
P1_GRADUATED = [(1, 5_000), (5, 25_000), (6, 29_000), (200, 805_000), (10_000, 11_705_000)]
P1_VOLUME = [(5, 25_000), (6, 24_000), (200, 800_000), (201, 603_000), (10_000, 10_000_000)]


async def test_quotes_match_vector_p1(sqlite_admin: AdminServer):
    for token in (sqlite_admin.tokens.ops, sqlite_admin.tokens.merchant_a):
        for sku, quantity, fen, pv in P1_PACKAGES:
            body = {"kind": "pv", "sku": sku, "quantity": quantity}
            quote = expect(await sqlite_admin.api.call("POST", "/v1/quotes", token, body), 200)
            assert (quote["total_fen"], quote["total_pv"]) == (fen, pv), (sku, quantity, quote)
            assert sum(line["amount_fen"] for line in quote["lines"]) == fen
        for accounts, fen in P1_GRADUATED:
            body = {"kind": "interop", "quantity": accounts}
            quote = expect(await sqlite_admin.api.call("POST", "/v1/quotes", token, body), 200)
            assert (quote["mode"], quote["total_fen"]) == ("graduated", fen), (accounts, quote)
            assert sum(line["quantity"] for line in quote["lines"]) == accounts
    refused = await sqlite_admin.ops("POST", "/v1/quotes", {"kind": "interop", "quantity": 10_001})
    expect(refused, 422, "interop_quantity_exceeds_self_service")
    assert "10001" in refused.body["error"]["message"].replace(",", "")


async def test_volume_pricing_quotes_match_vector_p1(make_sqlite_admin: AdminFactory):
    server = await make_sqlite_admin(BillingSettings(interop_pricing="volume"))
    for accounts, fen in P1_VOLUME:
        body = {"kind": "interop", "quantity": accounts}
        quote = expect(await server.ops("POST", "/v1/quotes", body), 200)
        assert (quote["mode"], quote["total_fen"]) == ("volume", fen), (accounts, quote)
    refused = await server.ops("POST", "/v1/quotes", {"kind": "interop", "quantity": 10_001})
    expect(refused, 422, "interop_quantity_exceeds_self_service")


BAD_QUOTES = [
    {"kind": "pv", "sku": "pv_9m", "quantity": 1},
    {"kind": "pv", "quantity": 1},
    {"kind": "pv", "sku": "pv_1m", "quantity": 0},
    {"kind": "interop", "quantity": 0},
    {"kind": "interop", "quantity": 5, "years": 0},
    {"kind": "coupons", "quantity": 1},
    {"kind": "pv", "sku": "pv_1m", "quantity": 1, "voucher": "V"},
]


async def test_bad_quotes_are_invalid_requests(sqlite_admin: AdminServer):
    for body in BAD_QUOTES:
        reply = await sqlite_admin.ops("POST", "/v1/quotes", body)
        assert (reply.status, reply.code) == (400, "invalid_request"), (body, str(reply))
