"""The purchase flow over HTTP (docs/rules.md §2, §5, §6, §7) against the full admin app.

Orders and their refusals, payment (idempotent, one set of buckets), refunds (vector R1,
idempotency, invoices, window, flags), and the audit trail of every mutation (quotes:
test_quotes_api.py; sites and their review: test_sites_api.py).  Each test runs on SQLite and, when
``PVGATE_TEST_POSTGRES_URL`` is set, on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from billing.api.services import STORE
from billing.schema import orders, payments
from tests.admin_api.conftest import (
    ENT_A,
    GIFT_PV,
    AdminServer,
    expect,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")


def order_body(enterprise_id: str = ENT_A, **changes: Any) -> dict[str, Any]:
    """A valid order body with ``changes``; a field changed to ``...`` is left out."""
    body: dict[str, Any] = {
        "enterprise_id": enterprise_id,
        "id_type": "wecom",
        "sku": "pv_1m",
        "quantity": 1,
        "agreement_accepted": True,
        **changes,
    }
    return {k: v for k, v in body.items() if v is not ...}


async def order_count(server: AdminServer, enterprise_id: str) -> int:
    statement = sa.select(sa.func.count()).where(orders.c.enterprise_id == enterprise_id)
    return int(await server.db.scalar(statement))


# Orders -----------------------------------------------------------------------------------

REFUSALS: list[tuple[str, dict[str, Any], int, str, str]] = [
    # (enterprise, body changes, status, code, a word the message must hold)
    ("ent-unverified", {}, 422, "enterprise_not_verified", "verif"),
    ("ent-medical", {}, 422, "restricted_industry", "medical"),
    ("ent-p2p", {}, 422, "restricted_industry", "P2P_Lending"),
    (ENT_A, {"agreement_accepted": False}, 422, "agreement_not_accepted", "agreement"),
    (ENT_A, {"voucher": "SPRING10"}, 422, "voucher_not_allowed", "voucher"),
    (ENT_A, {"sku": "pv_2m"}, 400, "invalid_request", "sku"),
    (ENT_A, {"quantity": 0}, 400, "invalid_request", "quantity"),
    (ENT_A, {"quantity": -3}, 400, "invalid_request", "quantity"),
    (ENT_A, {"id_type": "qidian"}, 400, "invalid_request", "id_type"),
    (ENT_A, {"id_type": "alipay"}, 400, "invalid_request", "id_type"),
    (ENT_A, {"agreement_accepted": ...}, 400, "invalid_request", "agreement_accepted"),
    (ENT_A, {"coupon": "X"}, 400, "invalid_request", "coupon"),
]


async def test_every_order_refusal_has_its_code(admin: AdminServer):
    await admin.register("ent-unverified", verified=False)
    await admin.register("ent-medical", industry="medical")
    await admin.register("ent-p2p", industry="P2P_Lending")
    for enterprise, changes, status, code, word in REFUSALS:
        before = await order_count(admin, enterprise)
        reply = await admin.api.call(
            "POST", "/v1/orders", admin.tokens.ops, order_body(enterprise, **changes)
        )
        case = f"{enterprise} {changes}: {reply}"
        assert (reply.status, reply.code) == (status, code), case
        assert set(reply.body["error"]) == {"code", "message"}, case
        assert word.lower() in reply.body["error"]["message"].lower(), case
        assert await order_count(admin, enterprise) == before, f"order created: {case}"


@pytest.mark.parametrize("accepted", ["yes", "on", 1])
async def test_only_literal_true_accepts_the_agreement(sqlite_admin: AdminServer, accepted: object):
    before = await order_count(sqlite_admin, ENT_A)
    reply = await sqlite_admin.ops("POST", "/v1/orders", order_body(agreement_accepted=accepted))
    assert reply.status in (400, 422), reply
    assert await order_count(sqlite_admin, ENT_A) == before


async def test_an_order_is_pending_until_paid(admin: AdminServer):
    token = admin.tokens.merchant_a
    created = expect(await admin.api.call("POST", "/v1/orders", token, order_body()), 201)
    assert (created["status"], created["amount_fen"], created["packages"]) == (
        "pending_payment",
        3_000_000,
        [],
    )
    read = expect(await admin.api.call("GET", f"/v1/orders/{created['id']}", token), 200)
    assert read == created


async def test_paying_twice_credits_one_set_of_buckets(admin: AdminServer):
    order = await admin.order(sku="pv_3m", quantity=2, paid=False)
    pay = f"/v1/orders/{order['id']}/pay"
    first = expect(await admin.ops("POST", pay, {"reference": "wx-1"}), 200)
    again = expect(await admin.ops("POST", pay, {"reference": "wx-2"}), 200)
    assert again["packages"] == first["packages"]
    assert again["paid_at"] == first["paid_at"]
    # Two confirmations racing, each with its own key: still one payment.
    racing = await asyncio.gather(
        *(admin.ops("POST", pay, {"reference": f"wx-race-{i}"}) for i in range(4))
    )
    assert [r.status for r in racing] == [200] * 4, [str(r) for r in racing]

    assert first["status"] == "paid"
    packages = first["packages"]
    assert [p["granted_pv"] for p in packages] == [3_000_000, 3_000_000]
    assert [p["paid_cash_fen"] for p in packages] == [9_000_000, 9_000_000]
    paid_at = datetime.fromisoformat(first["paid_at"]).astimezone(SHANGHAI)
    for p in packages:
        expires = datetime.fromisoformat(p["expires_at"]).astimezone(SHANGHAI)
        assert (expires.year, expires.month, expires.day) == (
            paid_at.year + 1,
            paid_at.month,
            paid_at.day,
        )
    balance = await admin.balance(ENT_A)
    mine = [b for b in balance["buckets"] if b["order_id"] == order["id"]]
    assert sorted(b["id"] for b in mine) == sorted(p["id"] for p in packages)
    assert all(
        (b["kind"], b["status"], b["granted"], b["used"], b["remaining"])
        == ("package", "active", 3_000_000, 0, 3_000_000)
        for b in mine
    ), mine
    seeded = 1_000_000 + GIFT_PV  # ent-a's seeded package and gift
    assert balance["available"] == seeded + 6_000_000
    statement = sa.select(sa.func.count()).where(payments.c.order_id == order["id"])
    assert await admin.db.scalar(statement) == 1
    pays = [r for r in await admin.audit(ENT_A) if r["action"] == "order.pay"]
    assert sum(1 for r in pays if order["id"] in str(r["after"]["packages"])) == 1


async def test_a_replayed_payment_answers_the_same_bytes(admin: AdminServer):
    order = await admin.order(paid=False)
    key = f"pay-{uuid.uuid4()}"
    path = f"/v1/orders/{order['id']}/pay"
    first = await admin.ops("POST", path, {"reference": "r"}, key=key)
    second = await admin.ops("POST", path, {"reference": "r"}, key=key)
    assert (first.status, second.status) == (200, 200)
    assert second.raw == first.raw
    assert second.headers.get("Idempotent-Replayed") == "true"
    other = await admin.ops("POST", path, {"reference": "other"}, key=key)
    expect(other, 409, "idempotency_key_reused")


# Refunds --------------------------------------------------------------------------------------


async def r1_order(server: AdminServer, enterprise_id: str = "ent-r1") -> dict[str, Any]:
    """Vector R1: pv_1m × 3 with a 10,000 PV gift; gift 10,000, A 1M and B 490,000 used."""
    await server.register(enterprise_id)
    order = await server.order(enterprise_id, quantity=3)
    gift = {"pv": 10_000, "reason": "launch", "order_id": order["id"]}
    expect(await server.ops("POST", f"/v1/enterprises/{enterprise_id}/gifts", gift), 201)
    debit = await server.app[STORE].debit(enterprise_id, 1_500_000)
    assert debit.granted == 1_500_000
    read: dict[str, Any] = expect(await server.ops("GET", f"/v1/orders/{order['id']}"), 200)
    return read


def refund_body(order: dict[str, Any], packages: int | None = None) -> dict[str, Any]:
    ids = [p["id"] for p in order["packages"]]
    return {"order_id": order["id"], "package_ids": ids[:packages]}


async def test_refund_quote_then_execution_match_vector_r1(admin: AdminServer):
    order = await r1_order(admin)
    a, b, c = (p["id"] for p in order["packages"])
    before = await admin.balance("ent-r1")
    quote = expect(await admin.ops("POST", "/v1/refunds/quote", refund_body(order)), 200)
    assert quote["total_refund_fen"] == 4_500_000
    assert quote["gift_used_pv"] == 10_000
    assert quote["recharged"] == {b: 10_000}
    assert quote["voided_gifts"] == order["gift_ids"]
    assert quote["dropped_pv"] == 0
    lines = {x["package_id"]: x for x in quote["lines"]}
    assert {p: (x["used_after"], x["refund_fen"]) for p, x in lines.items()} == {
        a: (1_000_000, 0),
        b: (500_000, 1_500_000),
        c: (0, 3_000_000),
    }
    assert await admin.balance("ent-r1") == before, "a quote must change nothing"

    key = f"refund-{uuid.uuid4()}"
    token = admin.tokens.ops
    first = await admin.api.call("POST", "/v1/refunds", token, refund_body(order), key=key)
    done = expect(first, 201)
    assert done["total_refund_fen"] == 4_500_000
    assert {x["package_id"]: x for x in done["lines"]} == lines
    replay = await admin.api.call("POST", "/v1/refunds", token, refund_body(order), key=key)
    assert (replay.status, replay.raw) == (201, first.raw)
    assert replay.headers.get("Idempotent-Replayed") == "true"

    again = await admin.api.call("POST", "/v1/refunds", token, refund_body(order))
    assert (again.status, again.code) == (409, "conflict"), again
    assert "already refunded" in again.body["error"]["message"]
    reused = await admin.api.call("POST", "/v1/refunds", token, refund_body(order, 1), key=key)
    expect(reused, 409, "idempotency_key_reused")

    balance = await admin.balance("ent-r1")
    states = {x["id"]: x["status"] for x in balance["buckets"]}
    assert states == {a: "refunded", b: "refunded", c: "refunded", order["gift_ids"][0]: "void"}
    assert balance["available"] == 0
    refunds = [r for r in await admin.audit("ent-r1") if r["action"] == "refund.execute"]
    assert len(refunds) == 1
    assert refunds[0]["after"]["total_fen"] == 4_500_000


async def test_a_partial_refund_voids_the_gift_and_leaves_the_rest(admin: AdminServer):
    order = await r1_order(admin)
    a, b, c = (p["id"] for p in order["packages"])
    only_c = {"order_id": order["id"], "package_ids": [c]}
    done = expect(await admin.api.call("POST", "/v1/refunds", admin.tokens.ops, only_c), 201)
    assert done["total_refund_fen"] == 3_000_000
    balance = await admin.balance("ent-r1")
    states = {x["id"]: (x["status"], x["used"]) for x in balance["buckets"]}
    assert states[c] == ("refunded", 0)
    assert states[order["gift_ids"][0]][0] == "void"
    assert states[b] == ("active", 500_000)  # the gift's 10,000 PV charged again to B
    assert balance["available"] == 1_000_000 - 500_000
    rest = {"order_id": order["id"], "package_ids": [a, b]}
    quote = expect(await admin.ops("POST", "/v1/refunds/quote", rest), 200)
    assert quote["total_refund_fen"] == 1_500_000
    assert quote["recharged"] == {}


async def test_an_issued_invoice_blocks_refunds_until_returned(admin: AdminServer):
    order = await admin.order(quantity=2)
    path = f"/v1/orders/{order['id']}"
    issued = expect(await admin.ops("POST", f"{path}/invoice", {"number": "INV-7"}), 200)
    assert issued["invoice"] == "issued"
    expect(await admin.ops("POST", f"{path}/invoice", {"number": "INV-8"}), 409, "conflict")
    merchant = admin.tokens.merchant_a
    for route in ("/v1/refunds/quote", "/v1/refunds"):
        refused = await admin.api.call("POST", route, merchant, refund_body(order))
        expect(refused, 422, "invoice_not_returned")
        assert order["id"] in refused.body["error"]["message"]
    returned = expect(await admin.ops("POST", f"{path}/invoice/return", {"number": "INV-7"}), 200)
    assert returned["invoice"] == "returned"
    done = expect(await admin.api.call("POST", "/v1/refunds", merchant, refund_body(order)), 201)
    assert done["total_refund_fen"] == 6_000_000


async def test_refund_refusals(admin: AdminServer):
    late = await admin.order(paid_at=datetime.now(UTC) - timedelta(days=45))
    refused = await admin.ops("POST", "/v1/refunds/quote", refund_body(late))
    expect(refused, 422, "refund_window_closed")
    unpaid = await admin.order(paid=False)
    unpaid_body = {"order_id": unpaid["id"], "package_ids": [f"{unpaid['id']}.p000"]}
    expect(await admin.ops("POST", "/v1/refunds/quote", unpaid_body), 409, "conflict")
    paid = await admin.order()
    no_key = await admin.ops("POST", "/v1/refunds", refund_body(paid), key=None)
    expect(no_key, 400, "invalid_request")
    assert admin.seed is not None
    foreign = {"order_id": paid["id"], "package_ids": [admin.seed.order_b["packages"][0]["id"]]}
    expect(await admin.ops("POST", "/v1/refunds", foreign), 400, "invalid_request")
    flag = {"flagged_abuse": True, "reason": "suspected click fraud"}
    expect(await admin.ops("PATCH", f"/v1/enterprises/{ENT_A}", flag), 200)
    flagged = await admin.ops("POST", "/v1/refunds", refund_body(paid))
    expect(flagged, 422, "enterprise_flagged")
    assert [b["status"] for b in (await admin.balance(ENT_A))["buckets"]].count("refunded") == 0


# Audit ----------------------------------------------------------------------------------------


def audited_by_request(
    rows: list[dict[str, Any]], done: list[tuple[str, str, str]], started: datetime
) -> dict[str, dict[str, Any]]:
    """The audit rows by request id, each request of ``done`` (id, action, token) in them."""
    by_request = {r["request_id"]: r for r in rows}
    for request_id, action, token_id in done:
        row = by_request.get(request_id)
        assert row is not None, f"no audit row for {action} ({request_id})"
        assert row["action"] == action, row
        assert row["actor"].startswith(f"{token_id}:"), row
        assert datetime.fromisoformat(row["at"]) >= started - timedelta(seconds=1)
    return by_request


@dataclass
class Mutations:
    """Mutations made through the API, each tagged with its own ``X-Request-Id``."""

    admin: AdminServer
    done: list[tuple[str, str, str]] = field(default_factory=list)  # request id, action, token

    async def __call__(
        self, action: str, who: str, method: str, path: str, body: Any, status: int
    ) -> dict[str, Any]:
        request_id = f"audit-{len(self.done)}-{uuid.uuid4().hex[:8]}"
        token = getattr(self.admin.tokens, who)
        reply = await self.admin.api.call(
            method, path, token, body, headers={"X-Request-Id": request_id}
        )
        assert reply.headers["X-Request-Id"] == request_id
        result: dict[str, Any] = expect(reply, status)
        self.done.append((request_id, action, self.admin.tokens.ids[who]))
        return result


async def test_every_mutation_leaves_an_audit_row(admin: AdminServer):
    """Each mutation, tagged with its own X-Request-Id, is found in the audit log."""
    mutate = Mutations(admin)
    started = datetime.now(UTC)
    ent = "ent-audited"
    new = {"id": ent, "id_type": "wecom", "name": "Audited Ltd", "industry": "retail"}
    await mutate("enterprise.register", "partner_a", "POST", "/v1/enterprises", new, 201)
    verify = {"verified": True, "reason": "documents checked"}
    await mutate("enterprise.update", "ops", "PATCH", f"/v1/enterprises/{ent}", verify, 200)
    await admin.register("ent-other")  # not this enterprise's: must not show up below
    order = await mutate("order.create", "partner_a", "POST", "/v1/orders", order_body(ent), 201)
    o = f"/v1/orders/{order['id']}"
    order = await mutate("order.pay", "ops", "POST", f"{o}/pay", {"reference": "wx"}, 200)
    gift = {"pv": 50, "reason": "sorry for the outage"}
    gift = await mutate("gift.grant", "ops", "POST", f"/v1/enterprises/{ent}/gifts", gift, 201)
    adjust = {"bucket_id": gift["id"], "delta_pv": 25, "reason": "goodwill"}
    await mutate("bucket.adjust", "ops", "POST", f"/v1/enterprises/{ent}/adjustments", adjust, 201)
    await mutate("invoice.issued", "ops", "POST", f"{o}/invoice", {"number": "INV-1"}, 200)
    await mutate("invoice.returned", "ops", "POST", f"{o}/invoice/return", {"number": "INV-1"}, 200)
    site = {"enterprise_id": ent, "origin": "http://127.0.0.1:9/"}
    await mutate("site.put", "partner_a", "PUT", "/v1/sites/audited.test", site, 200)
    review = {"decision": "reject", "note": "misleading claims"}
    await mutate("site.review", "ops", "POST", "/v1/sites/audited.test/review", review, 200)
    refund = refund_body(order)
    await mutate("refund.execute", "ops", "POST", "/v1/refunds", refund, 201)

    rows = await admin.audit(ent)
    assert {r["enterprise_id"] for r in rows} == {ent}
    by_request = audited_by_request(rows, mutate.done, started)
    update = by_request[mutate.done[1][0]]
    assert (update["before"]["verified"], update["after"]["verified"]) == (False, True)
    assert update["reason"] == "documents checked"
    # A refused mutation writes nothing.
    expect(await admin.ops("POST", "/v1/refunds", refund), 409)
    assert len(await admin.audit(ent)) == len(rows)
    # The time filter.
    until = (started - timedelta(seconds=5)).isoformat()
    early = await admin.ops("GET", "/v1/audit", params={"enterprise_id": ent, "until": until})
    assert expect(early, 200)["items"] == []


async def test_suspension_blocks_the_balance_until_lifted(admin: AdminServer):
    for suspended, reason in ((True, "suspended"), (False, None)):
        patch = {"suspended": suspended, "reason": "agreement breach under review"}
        expect(await admin.ops("PATCH", f"/v1/enterprises/{ENT_A}", patch), 200)
        balance = await admin.balance(ENT_A)
        assert (balance["suspended"], balance["blocked_reason"]) == (suspended, reason), balance
        assert balance["available"] == 1_000_000 + GIFT_PV
        debit = await admin.app[STORE].debit(ENT_A, 1)
        assert debit.granted == (0 if suspended else 1), debit
