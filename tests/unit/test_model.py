"""The reference model on its own: docs/rules.md §3 deduction order with an explicit clock."""

from __future__ import annotations

import pytest

from metering.buckets import BucketStatus, Refusal
from metering.model import BalanceModel
from tests.helpers import DAY_MS, T0, gift, package

NOW = T0 + 1000


def model_with(*specs):
    m = BalanceModel()
    for spec in specs:
        assert m.credit(spec) == 1
    return m


def test_gifts_first_then_packages_oldest_first():
    m = model_with(
        package("p-new", 2, at=20),
        package("p-old", 2, at=10),
        gift("g2", 1, at=30),
        gift("g1", 1, at=5),
    )
    taken = [m.debit(1, NOW).takes[0][0] for _ in range(6)]
    assert taken == ["g1", "g2", "p-old", "p-old", "p-new", "p-new"]
    assert m.debit(1, NOW).reason is Refusal.EXHAUSTED


def test_expiry_boundary_is_exclusive():
    m = model_with(package("p", 5, expires=2000), package("q", 5, at=1))
    assert m.debit(1, T0 + 1999).takes == (("p", 1),)
    assert m.debit(1, T0 + 2000).takes == (("q", 1),)


def test_refusal_reasons():
    assert BalanceModel().debit(1, NOW).reason is Refusal.NO_BALANCE
    expired = model_with(package("p", 5, expires=-1))
    assert expired.debit(1, NOW).reason is Refusal.EXPIRED
    used_up = model_with(gift("g", 1))
    used_up.debit(1, NOW)
    assert used_up.debit(1, NOW).reason is Refusal.EXHAUSTED
    used_up.set_suspended(True)
    assert used_up.debit(1, NOW).reason is Refusal.SUSPENDED
    refunded = model_with(package("p", 3))
    refunded.freeze(["p"])
    assert refunded.debit(1, NOW).reason is Refusal.NO_BALANCE


def test_void_recharges_live_packages_in_order_and_drops_the_rest():
    m = model_with(
        gift("g", 10, order="o"), package("a", 5, at=1), package("b", 5, at=2, expires=-DAY_MS)
    )
    assert m.debit(10, NOW).takes == (("g", 10),)
    result = m.void_gifts(["g"], recharge=True, now=NOW)
    assert result.gifts_used == {"g": 10}
    assert result.recharged == {"a": 5}  # b expired: no room counts there
    assert result.dropped == 5
    assert [b.status for b in m.buckets()] == [
        BucketStatus.VOID,
        BucketStatus.ACTIVE,
        BucketStatus.ACTIVE,
    ]


def test_credit_is_idempotent_and_refuses_other_terms():
    m = model_with(gift("g", 3))
    assert m.credit(gift("g", 3)) == 0
    assert m.credit(gift("g", 4)) == -1
    assert [b.granted for b in m.buckets()] == [3]


def test_debit_rejects_non_positive():
    with pytest.raises(ValueError, match="positive"):
        BalanceModel().debit(0, NOW)
