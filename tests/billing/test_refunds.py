"""Refunds (docs/rules.md §6) end to end through Redis and the ledger, vector R1 verbatim."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest

import billing.refunding
from billing.audit import SystemAuditor
from billing.db import Database
from billing.errors import BillingError
from billing.ledger import OrderState
from billing.operations import grant_gift, invoice_event, update_enterprise
from billing.refunding import RefundResult, quote
from billing.schema import (
    audit_log,
    balance_entries,
    reconciliations,
    refund_completions,
    refund_lines,
    refunds,
)
from metering import BalanceStore, BucketStatus
from metering.buckets import Refusal
from tests.billing.support import (
    ENT,
    LINE_FIELDS,
    TZ,
    Killed,
    booked_lines,
    code_of,
    count,
    debit_counted,
    enterprise,
    now,
    paid_order,
    refund,
    rows,
)


async def r1_setup(
    db: Database, store: BalanceStore, audit: SystemAuditor
) -> tuple[OrderState, str]:
    """docs/rules.md §6 (R1): three pv_1m in one order, a 10,000 PV gift, 1,500,000 PV viewed."""
    await enterprise(db, audit)
    state = await paid_order(db, store, audit, quantity=3)
    assert state.order.amount_fen == 9_000_000
    gift = await grant_gift(
        db, store, audit, ENT, pv=10_000, reason="comes with the order",
        order_id=state.order.id, expires_at=None, tz=TZ,
    )  # fmt: skip
    a, b, _c = (p.id for p in state.packages)
    takes = await debit_counted(store, 1_500_000)
    assert takes == {gift.id: 10_000, a: 1_000_000, b: 490_000}
    return state, gift.id


async def test_vector_r1_end_to_end(db: Database, store: BalanceStore, audit: SystemAuditor):
    state, gift_id = await r1_setup(db, store, audit)
    a, b, c = (p.id for p in state.packages)
    quoted = await quote(db, store, state.order.id, [a, b, c], now=now(), tz=TZ)
    result = await refund(db, store, audit, state, [a, b, c])

    assert booked_lines(result) == [
        (a, 3_000_000, 1_000_000, 0, 1_000_000, 0),
        (b, 3_000_000, 490_000, 10_000, 500_000, 1_500_000),
        (c, 3_000_000, 0, 0, 0, 3_000_000),
    ]
    assert result.total_refund_fen == 4_500_000
    # The quote shown before said exactly this: nothing moved in between.
    assert quoted.total_refund_fen == 4_500_000
    assert [(*(getattr(q, f) for f in LINE_FIELDS), q.refund_fen) for q in quoted.lines] == (
        booked_lines(result)
    )
    assert dict(quoted.recharged) == {b: 10_000}
    assert (quoted.voided_gifts, quoted.gift_used_pv, quoted.dropped_pv) == ((gift_id,), 10_000, 0)
    assert [line.cleared for line in quoted.lines] == [True, False, False]

    # The payer's balance got the money, once; the ledger holds the whole story.
    [entry] = await rows(db, balance_entries)
    assert (entry["enterprise_id"], entry["amount_fen"], entry["kind"]) == (
        ENT,
        4_500_000,
        "refund",
    )
    assert entry["reference"] == result.refund_id
    [completion] = await rows(db, refund_completions)
    assert completion["total_fen"] == 4_500_000
    assert sorted((r["package_id"], r["refund_fen"]) for r in await rows(db, refund_lines)) == [
        (a, 0), (b, 1_500_000), (c, 3_000_000)
    ]  # fmt: skip
    [recharge] = await rows(db, reconciliations)
    assert (recharge["bucket_id"], recharge["delta_pv"]) == (b, 10_000)
    [audited] = await rows(db, audit_log, action="refund.execute")
    assert audited["after"]["total_fen"] == 4_500_000

    # Redis: the gift is void, the three packages stopped, B carries the re-charged PV.
    snapshot = await store.snapshot(ENT)
    by_id = {bucket.id: bucket for bucket in snapshot.buckets}
    assert by_id[gift_id].status is BucketStatus.VOID
    assert [by_id[p].status for p in (a, b, c)] == [BucketStatus.REFUNDED] * 3
    assert [by_id[p].used for p in (a, b, c)] == [1_000_000, 500_000, 0]
    assert snapshot.available == 0
    assert (await store.debit(ENT)).reason is Refusal.NO_BALANCE


async def test_the_same_key_returns_the_same_refund_and_books_nothing_new(
    db: Database, store: BalanceStore, audit: SystemAuditor
):
    state, _gift = await r1_setup(db, store, audit)
    ids = [p.id for p in state.packages]
    first = await refund(db, store, audit, state, ids)
    again = await refund(db, store, audit, state, list(reversed(ids)))
    assert again == first
    assert await count(db, refunds) == 1
    assert await count(db, refund_completions) == 1
    assert await count(db, balance_entries) == 1
    assert await count(db, reconciliations) == 1
    assert len(await rows(db, audit_log, action="refund.execute")) == 1
    # The key names one refund: reused for another, it is refused.
    assert await code_of(refund(db, store, audit, state, ids[:1])) == "conflict"


async def test_a_crash_between_freeze_and_booking_completes_once_on_retry(
    db: Database, store: BalanceStore, audit: SystemAuditor, monkeypatch: pytest.MonkeyPatch
):
    state, gift_id = await r1_setup(db, store, audit)
    ids = [p.id for p in state.packages]
    real_book = billing.refunding._book

    async def dies_once(*args: Any) -> None:
        monkeypatch.setattr(billing.refunding, "_book", real_book)
        raise Killed("between freeze and booking")

    monkeypatch.setattr(billing.refunding, "_book", dies_once)
    with pytest.raises(Killed):
        await refund(db, store, audit, state, ids)
    # Redis has voided and frozen; the ledger has the request and nothing else.
    snapshot = await store.snapshot(ENT)
    assert {b.status for b in snapshot.buckets} == {BucketStatus.VOID, BucketStatus.REFUNDED}
    assert (await count(db, refunds), await count(db, refund_completions)) == (1, 0)
    assert await count(db, balance_entries) == 0

    result = await refund(db, store, audit, state, ids)
    assert result.total_refund_fen == 4_500_000
    assert [line.used_after for line in result.lines] == [1_000_000, 500_000, 0]
    assert [line.recharged_pv for line in result.lines] == [0, 10_000, 0]
    assert await refund(db, store, audit, state, ids) == result
    assert await count(db, refund_completions) == 1
    assert [e["amount_fen"] for e in await rows(db, balance_entries)] == [4_500_000]
    assert [r["delta_pv"] for r in await rows(db, reconciliations)] == [10_000]
    assert [b.used for b in (await store.snapshot(ENT)).buckets if b.id != gift_id] == [
        1_000_000, 500_000, 0
    ]  # fmt: skip


async def test_an_already_refunded_package_under_a_new_key_is_a_conflict(
    db: Database, store: BalanceStore, audit: SystemAuditor
):
    await enterprise(db, audit)
    state = await paid_order(db, store, audit, quantity=2)
    a, b = (p.id for p in state.packages)
    first = await refund(db, store, audit, state, [a])
    assert first.total_refund_fen == 3_000_000
    assert await code_of(refund(db, store, audit, state, [a], key="refund-2")) == "conflict"
    assert await code_of(refund(db, store, audit, state, [a, b], key="refund-3")) == "conflict"
    assert await count(db, refunds) == 1
    # The other package is still refundable on its own.
    second = await refund(db, store, audit, state, [b], key="refund-4")
    assert second.total_refund_fen == 3_000_000
    assert [e["amount_fen"] for e in await rows(db, balance_entries)] == [3_000_000] * 2


@pytest.mark.parametrize("flag", ["flagged_abuse", "flagged_violation"])
async def test_refusals_leave_redis_and_the_ledger_untouched(
    db: Database, store: BalanceStore, audit: SystemAuditor, flag: str
):
    state, gift_id = await r1_setup(db, store, audit)
    ids = [p.id for p in state.packages]
    before = await store.snapshot(ENT)

    await invoice_event(db, audit, state.order.id, "issued", "F1")
    assert await code_of(refund(db, store, audit, state, ids)) == "invoice_not_returned"
    await invoice_event(db, audit, state.order.id, "returned", "F1")

    await update_enterprise(db, store, audit, ENT, {flag: True}, "ops review")
    assert await code_of(refund(db, store, audit, state, ids)) == "enterprise_flagged"
    assert await code_of(quote(db, store, state.order.id, ids, now=now(), tz=TZ)) == (
        "enterprise_flagged"
    )
    assert (
        await code_of(refund(db, store, audit, state, ["nope"], key="k2")) == "enterprise_flagged"
    )

    assert await count(db, refunds) == 0
    after = await store.snapshot(ENT)
    assert after.buckets == before.buckets  # no gift voided, nothing frozen
    await update_enterprise(db, store, audit, ENT, {flag: False}, "cleared")
    assert (await refund(db, store, audit, state, ids)).total_refund_fen == 4_500_000
    assert gift_id in {b.id for b in after.buckets}


async def test_bad_package_lists_are_invalid_requests(
    db: Database, store: BalanceStore, audit: SystemAuditor
):
    await enterprise(db, audit)
    state = await paid_order(db, store, audit, quantity=2)
    other = await paid_order(db, store, audit)
    assert await code_of(refund(db, store, audit, state, [])) == "invalid_request"
    foreign = other.packages[0].id
    assert await code_of(refund(db, store, audit, state, [foreign])) == "invalid_request"
    assert await count(db, refunds) == 0
    assert {b.status for b in (await store.snapshot(ENT)).buckets} == {BucketStatus.ACTIVE}


async def test_a_package_listed_twice_is_refunded_once(
    db: Database, store: BalanceStore, audit: SystemAuditor
):
    await enterprise(db, audit)
    state = await paid_order(db, store, audit, quantity=2)
    a = state.packages[0].id
    outcomes: Any = await asyncio.gather(
        refund(db, store, audit, state, [a, a]), return_exceptions=True
    )
    outcome = outcomes[0]
    if isinstance(outcome, BillingError):  # refusing the request is as good as deduplicating
        assert outcome.code == "invalid_request"
        assert {b.status for b in (await store.snapshot(ENT)).buckets} == {BucketStatus.ACTIVE}
    else:
        assert isinstance(outcome, RefundResult), outcome
        assert outcome.total_refund_fen == 3_000_000
    assert await count(db, balance_entries) == (1 if await count(db, refunds) else 0)


async def test_the_refund_window_is_one_calendar_month(
    db: Database, store: BalanceStore, audit: SystemAuditor
):
    await enterprise(db, audit)
    late = await paid_order(db, store, audit, paid_at=now() - timedelta(days=40))
    ids = [late.packages[0].id]
    assert await code_of(refund(db, store, audit, late, ids)) == "refund_window_closed"
    assert await code_of(quote(db, store, late.order.id, ids, now=now(), tz=TZ)) == (
        "refund_window_closed"
    )
    assert await count(db, refunds) == 0
    assert (await store.snapshot(ENT)).buckets[0].status is BucketStatus.ACTIVE
    recent = await paid_order(db, store, audit, paid_at=now() - timedelta(days=27))
    result = await refund(db, store, audit, recent, [recent.packages[0].id], key="k2")
    assert result.total_refund_fen == 3_000_000


async def test_a_refund_racing_live_traffic_takes_no_pv_after_the_freeze(
    db: Database, store: BalanceStore, audit: SystemAuditor
):
    await enterprise(db, audit)
    state = await paid_order(db, store, audit, quantity=2, paid_at=now() - timedelta(days=2))
    newer = await paid_order(db, store, audit)
    refunded = [p.id for p in state.packages]
    gift = await grant_gift(
        db, store, audit, ENT, pv=1_000, reason="promo", order_id=state.order.id,
        expires_at=None, tz=TZ,
    )  # fmt: skip
    await debit_counted(store, 1_500)

    taken: Counter[str] = Counter({gift.id: 1_000, refunded[0]: 500})
    after_refund: list[tuple[str, int]] = []
    refund_done = asyncio.Event()
    stop = asyncio.Event()

    async def traffic() -> None:
        while not stop.is_set():
            started_after = refund_done.is_set()
            debit = await store.debit(ENT, 3)
            assert debit.granted == 3
            taken.update(dict(debit.takes))
            if started_after:
                after_refund.extend(debit.takes)

    tasks = [asyncio.create_task(traffic()) for _ in range(6)]
    await asyncio.sleep(0.1)
    result = await refund(db, store, audit, state, refunded)
    refund_done.set()
    await asyncio.sleep(0.1)
    stop.set()
    await asyncio.gather(*tasks)

    snapshot = {b.id: b for b in (await store.snapshot(ENT)).buckets}
    lines = {line.package_id: line for line in result.lines}
    assert taken[refunded[0]] > 500  # traffic did hit the package being refunded
    for package_id in refunded:
        assert snapshot[package_id].status is BucketStatus.REFUNDED
        assert lines[package_id].used_after == snapshot[package_id].used
        # Every PV it gave, to traffic or to the gift's re-charge, is in the booked figure.
        assert taken[package_id] + lines[package_id].recharged_pv == snapshot[package_id].used
        assert lines[package_id].refund_fen == 3_000_000 - 3 * snapshot[package_id].used
    assert after_refund
    assert {bucket for bucket, _ in after_refund} == {newer.packages[0].id}
    assert snapshot[newer.packages[0].id].used == taken[newer.packages[0].id]


async def test_concurrent_requests_with_one_key_refund_once(
    db: Database, store: BalanceStore, audit: SystemAuditor
):
    state, _gift = await r1_setup(db, store, audit)
    ids = [p.id for p in state.packages]
    outcomes = await asyncio.gather(
        refund(db, store, audit, state, ids), refund(db, store, audit, state, ids),
        return_exceptions=True,
    )  # fmt: skip
    results = [o for o in outcomes if isinstance(o, RefundResult)]
    assert results
    assert all(isinstance(o, RefundResult | BillingError) for o in outcomes), outcomes
    assert all(r.total_refund_fen == 4_500_000 for r in results)
    assert await count(db, refund_completions) == 1
    assert await count(db, balance_entries) == 1


async def test_a_failed_request_retried_after_another_key_refunded_the_package_pays_once(
    db: Database, store: BalanceStore, audit: SystemAuditor, monkeypatch: pytest.MonkeyPatch
):
    """Key A is accepted, then Redis fails before the freeze; ops refund with key B; the
    client's retry with key A must not refund the same package a second time."""
    state, _gift = await r1_setup(db, store, audit)
    c = state.packages[2].id
    real_freeze = store.freeze

    async def redis_fails(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(store, "freeze", real_freeze)
        raise Killed("Redis failed before the freeze")

    monkeypatch.setattr(store, "freeze", redis_fails)
    with pytest.raises(Killed):
        await refund(db, store, audit, state, [c], key="key-a")
    by_b = await refund(db, store, audit, state, [c], key="key-b")
    assert by_b.total_refund_fen == 3_000_000
    assert await code_of(refund(db, store, audit, state, [c], key="key-a")) == "conflict"
    assert [e["amount_fen"] for e in await rows(db, balance_entries)] == [3_000_000]
    assert await count(db, refund_completions) == 1
