"""Gifts, adjustments, invoices and enterprise changes: ledger, Redis and the audit log."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from billing.audit import SystemAuditor
from billing.db import Database
from billing.ledger import get_order
from billing.operations import (
    adjust_bucket,
    create_order,
    grant_gift,
    invoice_event,
    register_enterprise,
    update_enterprise,
)
from billing.rows import AdjustmentRow, GiftRow
from billing.rules.refunds import InvoiceState
from billing.schema import adjustments, audit_log, enterprises, gifts, invoice_events
from metering import BalanceStore, BucketKind, BucketStatus
from metering.buckets import Refusal, to_ms
from tests.billing.support import (
    ENT,
    TZ,
    Killed,
    code_of,
    count,
    enterprise,
    now,
    order_request,
    paid_order,
    rows,
)


async def audit_actions(db: Database) -> list[str]:
    return [r["action"] for r in sorted(await rows(db, audit_log), key=lambda r: r["id"])]


# Gifts ----------------------------------------------------------------------------------


async def test_a_gift_tied_to_an_order_is_used_before_packages(
    db: Database, store: BalanceStore, audit: SystemAuditor
):
    await enterprise(db, audit)
    state = await paid_order(db, store, audit)
    before = now()
    gift = await grant_gift(
        db, store, audit, ENT, pv=100, reason="launch promo", order_id=state.order.id,
        expires_at=None, tz=TZ,
    )  # fmt: skip
    [row] = await rows(db, gifts)
    assert row["order_id"] == state.order.id
    assert row["granted_pv"] == 100
    # The default expiry: one calendar year on the Shanghai wall clock.
    assert row["expires_at"] - row["granted_at"] in (timedelta(days=365), timedelta(days=366))
    assert row["granted_at"] >= before - timedelta(seconds=1)
    bucket = next(b for b in (await store.snapshot(ENT)).buckets if b.id == gift.id)
    assert bucket.kind is BucketKind.GIFT
    assert (bucket.granted, bucket.order_id) == (100, state.order.id)
    assert bucket.expires_at == to_ms(row["expires_at"])
    debit = await store.debit(ENT, 150)
    assert debit.takes == ((gift.id, 100), (state.packages[0].id, 50))
    audit_row = (await rows(db, audit_log, action="gift.grant"))[0]
    assert (audit_row["reason"], audit_row["enterprise_id"]) == ("launch promo", ENT)


async def test_gift_refusals(db: Database, store: BalanceStore, audit: SystemAuditor):
    await enterprise(db, audit)
    await enterprise(db, audit, "ent2")
    other = await paid_order(db, store, audit, "ent2")

    def grant(**kw: Any) -> Awaitable[GiftRow]:
        args: dict[str, Any] = {
            "pv": 10, "reason": "r", "order_id": None, "expires_at": None, "tz": TZ, **kw
        }  # fmt: skip
        enterprise_id = args.pop("enterprise_id", ENT)
        return grant_gift(db, store, audit, enterprise_id, **args)

    assert await code_of(grant(pv=0)) == "invalid_request"
    assert await code_of(grant(expires_at=now() - timedelta(seconds=1))) == "invalid_request"
    assert await code_of(grant(order_id=other.order.id)) == "not_found"
    assert await code_of(grant(order_id="ord_nope")) == "not_found"
    assert await code_of(grant(enterprise_id="nobody")) == "not_found"
    assert await count(db, gifts) == 0
    assert (await store.snapshot(ENT)).buckets == ()
    assert "gift.grant" not in await audit_actions(db)


# Adjustments ------------------------------------------------------------------------------


async def test_an_adjustment_needs_a_reason(
    db: Database, store: BalanceStore, audit: SystemAuditor
):
    await enterprise(db, audit)
    bucket_id = (await paid_order(db, store, audit)).packages[0].id
    for reason in ("", "   "):
        error_code = await code_of(
            adjust_bucket(
                db, store, audit, ENT, bucket_id=bucket_id, delta_pv=10, reason=reason,
                actor="ops1",
            )
        )  # fmt: skip
        assert error_code == "invalid_request"
    assert await count(db, adjustments) == 0
    assert (await store.snapshot(ENT)).buckets[0].granted == 1_000_000


async def test_adjustments_change_granted_but_never_below_used(
    db: Database, store: BalanceStore, audit: SystemAuditor
):
    await enterprise(db, audit)
    await enterprise(db, audit, "ent2")
    bucket_id = (await paid_order(db, store, audit)).packages[0].id
    foreign = (await paid_order(db, store, audit, "ent2")).packages[0].id
    await store.debit(ENT, 600)

    def adjust(delta: int, bucket: str = bucket_id) -> Awaitable[AdjustmentRow]:
        return adjust_bucket(
            db, store, audit, ENT, bucket_id=bucket, delta_pv=delta, reason="ticket 42",
            actor="ops1",
        )  # fmt: skip

    row = await adjust(500)
    assert (row.delta_pv, row.actor, row.reason) == (500, "ops1", "ticket 42")
    assert (await store.snapshot(ENT)).buckets[0].granted == 1_000_500
    assert await code_of(adjust(-(1_000_500 - 599))) == "invalid_request"
    assert await code_of(adjust(0)) == "invalid_request"
    assert await code_of(adjust(5, foreign)) == "not_found"
    assert await code_of(adjust(5, "nope")) == "not_found"
    snapshot = await store.snapshot(ENT)
    assert (snapshot.buckets[0].granted, snapshot.available) == (1_000_500, 1_000_500 - 600)
    await adjust(-(1_000_500 - 600))  # exactly down to used: nothing left
    snapshot = await store.snapshot(ENT)
    assert (snapshot.buckets[0].granted, snapshot.available) == (600, 0)
    assert (await store.debit(ENT)).reason is Refusal.EXHAUSTED
    assert [r["delta_pv"] for r in await rows(db, adjustments)] == [500, -999_900]
    audited = await rows(db, audit_log, action="bucket.adjust")
    assert [(r["before"], r["after"]) for r in sorted(audited, key=lambda r: r["id"])] == [
        ({"granted": 1_000_000}, {"granted": 1_000_500}),
        ({"granted": 1_000_500}, {"granted": 600}),
    ]


async def test_a_crash_after_the_redis_adjustment_is_completed_once_by_the_retry(
    db: Database, store: BalanceStore, audit: SystemAuditor, monkeypatch: pytest.MonkeyPatch
):
    """Redis applies an adjustment once per id; the retry (same id, as the API derives it
    from the idempotency key) books it in the ledger without applying it again."""
    import billing.operations.gifts

    await enterprise(db, audit)
    bucket_id = (await paid_order(db, store, audit)).packages[0].id
    real = billing.operations.gifts._adjust_in_redis

    async def dies_after_redis(*args: Any) -> tuple[int, int]:
        await real(*args)
        raise Killed("after Redis answered")

    monkeypatch.setattr(billing.operations.gifts, "_adjust_in_redis", dies_after_redis)
    with pytest.raises(Killed):
        await adjust_bucket(
            db, store, audit, ENT, bucket_id=bucket_id, delta_pv=500, reason="ticket",
            actor="ops1", adjustment_id="adj_retry",
        )  # fmt: skip
    assert await rows(db, adjustments) == []
    monkeypatch.setattr(billing.operations.gifts, "_adjust_in_redis", real)
    row = await adjust_bucket(
        db, store, audit, ENT, bucket_id=bucket_id, delta_pv=500, reason="ticket",
        actor="ops1", adjustment_id="adj_retry",
    )  # fmt: skip
    assert row.delta_pv == 500
    booked = sum(r["delta_pv"] for r in await rows(db, adjustments))
    assert booked == 500
    assert (await store.snapshot(ENT)).buckets[0].granted == 1_000_000 + booked


# Invoices ---------------------------------------------------------------------------------


async def test_invoices_need_payment_and_alternate_issue_and_return(
    db: Database, store: BalanceStore, audit: SystemAuditor
):
    await enterprise(db, audit)
    pending = await create_order(db, audit, order_request())
    assert await code_of(invoice_event(db, audit, pending.order.id, "issued", "F1")) == ("conflict")
    order_id = (await paid_order(db, store, audit)).order.id
    assert await code_of(invoice_event(db, audit, order_id, "returned", "F1")) == "conflict"
    state = await invoice_event(db, audit, order_id, "issued", "F1")
    assert state.invoice is InvoiceState.ISSUED
    assert await code_of(invoice_event(db, audit, order_id, "issued", "F2")) == "conflict"
    state = await invoice_event(db, audit, order_id, "returned", "F1")
    assert state.invoice is InvoiceState.RETURNED
    assert await code_of(invoice_event(db, audit, order_id, "returned", "F1")) == "conflict"
    state = await invoice_event(db, audit, order_id, "issued", "F3")
    assert state.invoice is InvoiceState.ISSUED
    async with db.engine.connect() as conn:
        assert (await get_order(conn, order_id)).invoice is InvoiceState.ISSUED
    events = [(r["event"], r["number"]) for r in await rows(db, invoice_events)]
    assert sorted(events) == sorted([("issued", "F1"), ("returned", "F1"), ("issued", "F3")])
    assert (await audit_actions(db))[-3:] == [
        "invoice.issued",
        "invoice.returned",
        "invoice.issued",
    ]
    assert await count(db, invoice_events, order_id=pending.order.id) == 0


# Enterprises ------------------------------------------------------------------------------


async def test_suspending_an_enterprise_stops_its_debits(
    db: Database, store: BalanceStore, audit: SystemAuditor
):
    await enterprise(db, audit)
    await paid_order(db, store, audit)
    assert (await store.debit(ENT)).granted == 1
    after = await update_enterprise(db, store, audit, ENT, {"suspended": True}, "unpaid dispute")
    assert after.suspended is True
    debit = await store.debit(ENT, 3)
    assert (debit.granted, debit.reason) == (0, Refusal.SUSPENDED)
    snapshot = await store.snapshot(ENT)
    assert snapshot.suspended
    assert snapshot.buckets[0].used == 1
    [row] = await rows(db, enterprises, id=ENT)
    assert row["suspended"] is True
    [entry] = await rows(db, audit_log, action="enterprise.update")
    assert (entry["before"]["suspended"], entry["after"]["suspended"]) == (False, True)
    assert entry["reason"] == "unpaid dispute"
    await update_enterprise(db, store, audit, ENT, {"suspended": False}, "settled")
    assert (await store.debit(ENT)).granted == 1
    assert len(await rows(db, audit_log, action="enterprise.update")) == 2


async def test_flags_are_ledger_only_and_unknown_enterprises_not_found(
    db: Database, store: BalanceStore, audit: SystemAuditor
):
    await enterprise(db, audit, verified=False)
    await paid_order_after_verifying(db, store, audit)
    await update_enterprise(db, store, audit, ENT, {"flagged_abuse": True}, "click farm")
    [row] = await rows(db, enterprises, id=ENT)
    assert (row["verified"], row["flagged_abuse"], row["suspended"]) == (True, True, False)
    assert row["updated_at"] > row["created_at"]
    assert (await store.debit(ENT)).granted == 1  # a flag blocks refunds, not pages
    error = await code_of(update_enterprise(db, store, audit, "nobody", {"suspended": True}, "x"))
    assert error == "not_found"
    assert not (await store.snapshot("nobody")).suspended


async def test_registration_takes_a_mapping_too_and_flags_are_checked_by_name(
    db: Database, store: BalanceStore, audit: SystemAuditor
):
    """`pvgate demo` registers its enterprise from a dict; a misspelt flag is refused."""
    fields = {"id": ENT, "id_type": "qidian", "name": "Demo", "industry": "retail"}
    registered = await register_enterprise(db, audit, fields)
    assert (registered.id_type, registered.verified, registered.partner_id) == (
        "qidian",
        False,
        None,
    )
    assert await code_of(register_enterprise(db, audit, fields)) == "conflict"
    [logged] = await rows(db, audit_log, action="enterprise.register")
    assert logged["after"]["id"] == ENT
    assert logged["after"]["flagged_abuse"] is False
    refused = update_enterprise(db, store, audit, ENT, {"verifed": True}, "typo")
    assert await code_of(refused) == "invalid_request"
    [row] = await rows(db, enterprises, id=ENT)
    assert row["verified"] is False


async def paid_order_after_verifying(
    db: Database, store: BalanceStore, audit: SystemAuditor
) -> None:
    assert await code_of(create_order(db, audit, order_request())) == "enterprise_not_verified"
    await update_enterprise(db, store, audit, ENT, {"verified": True}, "documents checked")
    await paid_order(db, store, audit)


async def test_every_mutation_writes_one_audit_row(
    db: Database, store: BalanceStore, audit: SystemAuditor
):
    await enterprise(db, audit)
    state = await paid_order(db, store, audit)
    order_id, bucket_id = state.order.id, state.packages[0].id
    await grant_gift(
        db, store, audit, ENT, pv=5, reason="r", order_id=None,
        expires_at=datetime.now(UTC) + timedelta(days=3), tz=TZ,
    )  # fmt: skip
    await adjust_bucket(
        db, store, audit, ENT, bucket_id=bucket_id, delta_pv=1, reason="r", actor="ops"
    )
    await invoice_event(db, audit, order_id, "issued", "F1")
    await invoice_event(db, audit, order_id, "returned", "F1")
    await update_enterprise(db, store, audit, ENT, {"flagged_violation": True}, "r")
    assert await audit_actions(db) == [
        "enterprise.register",
        "order.create",
        "order.pay",
        "gift.grant",
        "bucket.adjust",
        "invoice.issued",
        "invoice.returned",
        "enterprise.update",
    ]
    audit_rows = await rows(db, audit_log)
    assert {r["actor"] for r in audit_rows} == {"test"}
    assert {r["enterprise_id"] for r in audit_rows} == {ENT}
    assert all(abs(r["at"] - now()) < timedelta(minutes=1) for r in audit_rows)
    assert all(r["at"].tzinfo is not None for r in audit_rows)
    assert BucketStatus.ACTIVE in {b.status for b in (await store.snapshot(ENT)).buckets}
