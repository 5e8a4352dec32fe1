"""Gifts at a refund (docs/rules.md §6): the order's gifts are voided and their used PV
charged again to the oldest live packages; a re-charge belongs to the refund that voided
the gift, never to a later one — also when that later one crashed and is retried.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import billing.refunding
from billing.audit import SystemAuditor
from billing.db import Database
from billing.operations import grant_gift
from billing.refunding import quote
from billing.schema import reconciliations, refund_lines, refunds
from metering import BalanceStore, BucketStatus
from tests.billing.support import (
    ENT,
    LINE_FIELDS,
    TZ,
    Killed,
    booked_lines,
    debit_counted,
    enterprise,
    now,
    paid_order,
    refund,
    rows,
)


async def test_a_partial_refund_voids_every_gift_and_recharges_the_oldest_package(
    db: Database, store: BalanceStore, audit: SystemAuditor
):
    """The gift's used PV go to the oldest live package, here one of another order."""
    await enterprise(db, audit)
    older = await paid_order(db, store, audit, paid_at=now() - timedelta(days=3))
    state = await paid_order(db, store, audit, quantity=2)
    old_id = older.packages[0].id
    a, b = (p.id for p in state.packages)
    gifts = [
        await grant_gift(
            db, store, audit, ENT, pv=pv, reason="promo", order_id=state.order.id,
            expires_at=None, tz=TZ,
        )
        for pv in (300, 200)
    ]  # fmt: skip
    takes = await debit_counted(store, 450)
    assert takes == {gifts[0].id: 300, gifts[1].id: 150}

    quoted = await quote(db, store, state.order.id, [b], now=now(), tz=TZ)
    assert dict(quoted.recharged) == {old_id: 450}
    result = await refund(db, store, audit, state, [b])
    assert booked_lines(result) == [(b, 3_000_000, 0, 0, 0, 3_000_000)]
    assert quoted.total_refund_fen == result.total_refund_fen == 3_000_000
    snapshot = {x.id: x for x in (await store.snapshot(ENT)).buckets}
    assert [snapshot[g.id].status for g in gifts] == [BucketStatus.VOID] * 2
    assert snapshot[old_id].used == 450
    assert (snapshot[a].status, snapshot[a].used) == (BucketStatus.ACTIVE, 0)
    [recharge] = await rows(db, reconciliations)
    assert (recharge["bucket_id"], recharge["delta_pv"]) == (old_id, 450)
    assert (await store.debit(ENT)).takes == ((old_id, 1),)


def quoted_lines(quoted: Any) -> list[tuple[Any, ...]]:
    return [(*(getattr(q, f) for f in LINE_FIELDS), q.refund_fen) for q in quoted.lines]


async def test_a_second_refund_does_not_claim_the_recharge_of_a_gift_voided_by_the_first(
    db: Database, store: BalanceStore, audit: SystemAuditor
):
    """A full, so the gift's 20 PV went to B at the first refund; the second refund of B
    finds them in B's used, as its quote says, and re-charges nothing itself."""
    await enterprise(db, audit)
    state = await paid_order(db, store, audit, quantity=2)
    a, b = (p.id for p in state.packages)
    gift = await grant_gift(
        db, store, audit, ENT, pv=20, reason="promo", order_id=state.order.id,
        expires_at=None, tz=TZ,
    )  # fmt: skip
    assert await debit_counted(store, 1_000_025) == {gift.id: 20, a: 1_000_000, b: 5}
    first = await refund(db, store, audit, state, [a])
    assert booked_lines(first) == [(a, 3_000_000, 1_000_000, 0, 1_000_000, 0)]
    [request] = await rows(db, refunds, id=first.refund_id)
    assert request["voided_gifts"] == [gift.id]

    quoted = await quote(db, store, state.order.id, [b], now=now(), tz=TZ)
    assert (quoted.voided_gifts, dict(quoted.recharged)) == ((), {})
    second = await refund(db, store, audit, state, [b], key="refund-2")
    expected = [(b, 3_000_000, 25, 0, 25, 2_999_925)]
    assert quoted_lines(quoted) == booked_lines(second) == expected
    stored = await rows(db, refund_lines, refund_id=second.refund_id)
    assert [(*(r[f] for f in LINE_FIELDS), r["refund_fen"]) for r in stored] == expected
    # The re-charge entered the ledger once, with the first refund.
    assert [(r["bucket_id"], r["delta_pv"]) for r in await rows(db, reconciliations)] == [(b, 20)]


async def test_a_crashed_second_refund_retried_still_claims_no_recharge(
    db: Database, store: BalanceStore, audit: SystemAuditor, monkeypatch: pytest.MonkeyPatch
):
    await enterprise(db, audit)
    state = await paid_order(db, store, audit, quantity=2)
    a, b = (p.id for p in state.packages)
    await grant_gift(
        db, store, audit, ENT, pv=20, reason="promo", order_id=state.order.id,
        expires_at=None, tz=TZ,
    )  # fmt: skip
    await debit_counted(store, 1_000_025)
    await refund(db, store, audit, state, [a])
    real_book = billing.refunding._book

    async def dies_once(*args: Any) -> None:
        monkeypatch.setattr(billing.refunding, "_book", real_book)
        raise Killed("between freeze and booking")

    monkeypatch.setattr(billing.refunding, "_book", dies_once)
    with pytest.raises(Killed):
        await refund(db, store, audit, state, [b], key="refund-2")
    retried = await refund(db, store, audit, state, [b], key="refund-2")
    assert booked_lines(retried) == [(b, 3_000_000, 25, 0, 25, 2_999_925)]
