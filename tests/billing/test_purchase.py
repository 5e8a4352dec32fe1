"""Buying PV packages (docs/rules.md §2): each refusal with its code, payment into ledger, Redis."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from billing.audit import SystemAuditor
from billing.db import Database
from billing.errors import BillingError
from billing.ledger import OrderState, get_order
from billing.operations import create_order, pay_order
from billing.refunding import quote
from billing.schema import audit_log, orders, packages, payments
from metering import BalanceStore, BucketKind, BucketStatus, MeterUnavailable
from metering.buckets import to_ms
from tests.billing.support import (
    ENT,
    TZ,
    count,
    dead_redis,
    enterprise,
    now,
    order_request,
    paid_order,
    rows,
)

# (case, OrderRequest fields, enterprise fields, expected code)
REFUSALS: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    ("unknown-enterprise", {"enterprise_id": "nobody"}, {}, "not_found"),
    ("id-type-mismatch", {"id_type": "qidian"}, {}, "invalid_request"),
    ("unverified", {}, {"verified": False}, "enterprise_not_verified"),
    ("medical", {}, {"industry": "medical"}, "restricted_industry"),
    ("p2p-lending", {}, {"industry": " P2P_Lending "}, "restricted_industry"),
    ("agreement-false", {"agreement_accepted": False}, {}, "agreement_not_accepted"),
    ("agreement-string", {"agreement_accepted": "true"}, {}, "agreement_not_accepted"),
    ("voucher", {"voucher": "SPRING50"}, {}, "voucher_not_allowed"),
    ("unknown-sku", {"sku": "pv_2m"}, {}, "invalid_request"),
    ("quantity-0", {"quantity": 0}, {}, "invalid_request"),
    ("quantity-bool", {"quantity": True}, {}, "invalid_request"),
]


async def test_every_refused_purchase_has_its_code_and_books_nothing(
    db: Database, audit: SystemAuditor
):
    codes = {}
    for i, (case, request_fields, enterprise_fields, _code) in enumerate(REFUSALS):
        enterprise_id = f"ent{i}"
        await enterprise(db, audit, enterprise_id, **enterprise_fields)
        fields = {"enterprise_id": enterprise_id, **request_fields}
        with pytest.raises(BillingError) as info:
            await create_order(db, audit, order_request(**fields))
        codes[case] = info.value.code
    assert codes == {case: code for case, *_, code in REFUSALS}
    assert await count(db, orders) == 0
    assert {r["action"] for r in await rows(db, audit_log)} == {"enterprise.register"}


async def test_an_order_is_pending_until_paid(db: Database, audit: SystemAuditor):
    await enterprise(db, audit)
    order = await create_order(db, audit, order_request(sku="pv_3m", quantity=2))
    assert order.status == "pending_payment"
    assert order.order.amount_fen == 18_000_000  # docs/rules.md §7 (P1): pv_3m × 2
    assert order.packages == ()
    assert order.payment is None


async def test_paying_books_packages_and_credits_buckets(
    db: Database, store: BalanceStore, audit: SystemAuditor
):
    await enterprise(db, audit)
    order = await create_order(db, audit, order_request(quantity=3))
    assert order.order.amount_fen == 9_000_000
    [line] = order.lines  # the quoted line is kept with the order
    assert (line.item, line.quantity, line.unit_price_fen, line.amount_fen) == (
        "pv_1m",
        3,
        3_000_000,
        9_000_000,
    )
    paid_at = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
    state = await pay_order(
        db, store, audit, order.order.id, reference="wx-1", paid_at=paid_at, tz=TZ
    )
    assert state.status == "paid"
    assert state.paid_at == paid_at
    [payment] = await rows(db, payments)
    assert (payment["cash_fen"], payment["reference"]) == (9_000_000, "wx-1")
    booked = sorted(await rows(db, packages), key=lambda p: p["position"])
    assert [p["position"] for p in booked] == [0, 1, 2]
    assert [p["paid_cash_fen"] for p in booked] == [3_000_000] * 3
    assert {p["granted_pv"] for p in booked} == {1_000_000}
    assert {p["expires_at"] for p in booked} == {datetime(2027, 11, 20, 2, 0, tzinfo=UTC)}
    snapshot = await store.snapshot(ENT)
    assert [b.id for b in snapshot.buckets] == [p["id"] for p in booked]
    for bucket, package in zip(snapshot.buckets, booked, strict=True):
        assert bucket.kind is BucketKind.PACKAGE
        assert bucket.status is BucketStatus.ACTIVE
        assert (bucket.granted, bucket.used) == (1_000_000, 0)
        assert bucket.expires_at == to_ms(package["expires_at"])
        assert bucket.ordered_at == to_ms(paid_at)
        assert bucket.order_id == order.order.id
    assert snapshot.available == 3_000_000
    actions = [r["action"] for r in await rows(db, audit_log)]
    assert actions == ["enterprise.register", "order.create", "order.pay"]


async def test_expiry_is_one_calendar_year_in_shanghai(
    db: Database, store: BalanceStore, audit: SystemAuditor
):
    # 2024-02-28T16:30Z is 29 Feb 00:30 in Shanghai: it expires on 28 Feb 2025 00:30 there,
    # a day before "one year later" in UTC would say.
    paid_at = datetime(2024, 2, 28, 16, 30, tzinfo=UTC)
    await enterprise(db, audit)
    state = await paid_order(db, store, audit, paid_at=paid_at)
    [package] = state.packages
    assert package.expires_at == datetime(2025, 2, 27, 16, 30, tzinfo=UTC)
    [bucket] = (await store.snapshot(ENT)).buckets
    assert bucket.expires_at == to_ms(datetime(2025, 2, 27, 16, 30, tzinfo=UTC))


async def test_cash_split_sends_the_remainder_fen_to_the_first_packages(
    db: Database, store: BalanceStore, audit: SystemAuditor
):
    """Cash 7,999,999 fen (voucher excluded) over 3 packages: 2,666,667 + 2 × 2,666,666."""
    await enterprise(db, audit)
    async with db.begin() as conn:  # an order as an older release booked it, with a voucher
        await conn.execute(
            orders.insert().values(
                id="ord_legacy",
                enterprise_id=ENT,
                kind="pv",
                sku="pv_1m",
                quantity=3,
                amount_fen=9_000_000,
                voucher_fen=1_000_001,
                created_at=now(),
            )
        )
    state = await pay_order(db, store, audit, "ord_legacy", reference="r", paid_at=now(), tz=TZ)
    assert [p.paid_cash_fen for p in state.packages] == [2_666_667, 2_666_666, 2_666_666]
    [payment] = await rows(db, payments)
    assert payment["cash_fen"] == 7_999_999


async def test_paying_twice_books_and_credits_once(
    db: Database, store: BalanceStore, audit: SystemAuditor
):
    await enterprise(db, audit)
    first = await paid_order(db, store, audit, quantity=2)
    order_id = first.order.id
    await store.debit(ENT, 7)
    again = await pay_order(
        db, store, audit, order_id, reference="other", paid_at=now() + timedelta(hours=1), tz=TZ
    )
    assert again.payment == first.payment
    assert again.packages == first.packages
    assert await count(db, payments) == 1
    assert await count(db, packages) == 2
    snapshot = await store.snapshot(ENT)
    assert len(snapshot.buckets) == 2
    assert snapshot.available == 2_000_000 - 7
    assert [r["action"] for r in await rows(db, audit_log)].count("order.pay") == 1


async def test_a_crash_before_the_redis_credit_is_healed_by_paying_again(
    db: Database, store: BalanceStore, audit: SystemAuditor
):
    await enterprise(db, audit)
    order = await create_order(db, audit, order_request(quantity=3))
    order_id = order.order.id
    paid_at = now()
    dead = dead_redis()
    try:
        with pytest.raises(MeterUnavailable):
            await pay_order(
                db, BalanceStore(dead), audit, order_id, reference="r", paid_at=paid_at, tz=TZ
            )
    finally:
        await dead.aclose()
    assert await count(db, payments) == 1  # the ledger committed ...
    assert (await store.snapshot(ENT)).buckets == ()  # ... Redis never heard of it
    package_ids = [p.id for p in (await get_state(db, order_id)).packages]
    with pytest.raises(BillingError) as refused:  # nothing to refund before the buckets exist
        await quote(db, store, order_id, package_ids, now=now(), tz=TZ)
    assert refused.value.code == "conflict"
    state = await pay_order(db, store, audit, order_id, reference="r2", paid_at=now(), tz=TZ)
    assert state.paid_at == paid_at
    snapshot = await store.snapshot(ENT)
    assert [b.id for b in snapshot.buckets] == [p.id for p in state.packages]
    assert snapshot.available == 3_000_000
    assert await count(db, payments) == 1


async def test_a_crash_between_two_credits_is_healed_by_paying_again(
    db: Database, store: BalanceStore, audit: SystemAuditor, monkeypatch: pytest.MonkeyPatch
):
    await enterprise(db, audit)
    order = await create_order(db, audit, order_request(quantity=3))
    real_credit = store.credit
    calls = 0

    async def dies_on_the_second(*args: Any) -> bool:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise MeterUnavailable("killed")
        return await real_credit(*args)

    monkeypatch.setattr(store, "credit", dies_on_the_second)
    with pytest.raises(MeterUnavailable):
        await pay_order(db, store, audit, order.order.id, reference="r", paid_at=now(), tz=TZ)
    assert len((await store.snapshot(ENT)).buckets) == 1
    monkeypatch.undo()
    await store.debit(ENT, 5)  # the first bucket serves meanwhile
    await pay_order(db, store, audit, order.order.id, reference="r", paid_at=now(), tz=TZ)
    snapshot = await store.snapshot(ENT)
    assert len(snapshot.buckets) == 3
    assert [b.used for b in snapshot.buckets] == [5, 0, 0]  # the retry reset nothing
    assert snapshot.available == 3_000_000 - 5


async def test_paying_an_unknown_order_is_not_found(
    db: Database, store: BalanceStore, audit: SystemAuditor
):
    with pytest.raises(BillingError) as info:
        await pay_order(db, store, audit, "ord_nope", reference="r", paid_at=now(), tz=TZ)
    assert info.value.code == "not_found"
    assert await db.scalar(sa.select(sa.func.count()).select_from(payments)) == 0


async def get_state(db: Database, order_id: str) -> OrderState:
    async with db.engine.connect() as conn:
        return await get_order(conn, order_id)


async def test_two_concurrent_payment_confirmations_pay_once(
    db: Database, store: BalanceStore, audit: SystemAuditor
):
    await enterprise(db, audit)
    order = await create_order(db, audit, order_request(quantity=2))
    order_id = order.order.id
    outcomes: Any = await asyncio.gather(
        pay_order(db, store, audit, order_id, reference="notify-1", paid_at=now(), tz=TZ),
        pay_order(db, store, audit, order_id, reference="notify-2", paid_at=now(), tz=TZ),
        return_exceptions=True,
    )
    assert await count(db, payments) == 1
    assert len((await store.snapshot(ENT)).buckets) == 2
    assert all(not isinstance(o, BaseException) for o in outcomes), outcomes
    assert outcomes[0].payment == outcomes[1].payment
