"""Test 1: docs/rules.md §3 deduction order, as the Lua scripts do it, single node and cluster.

Every case states the expected takes outright and also checks the reference model agrees.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from metering import BalanceStore
from metering.buckets import BucketSpec, Refusal
from metering.model import BalanceModel
from tests.helpers import DAY_MS, gift, package


@dataclass
class Case:
    buckets: list[BucketSpec]
    debits: list[tuple[int, tuple[tuple[str, int], ...], Refusal | None]]
    freeze: list[str] = field(default_factory=list)
    void: list[str] = field(default_factory=list)


CASES = {
    "gift-fifo-then-packages": Case(
        [package("p1", 2, at=1), gift("g2", 2, at=20), gift("g1", 2, at=10)],
        [
            (1, (("g1", 1),), None),
            (2, (("g1", 1), ("g2", 1)), None),
            (2, (("g2", 1), ("p1", 1)), None),
        ],
    ),
    "gift-before-older-package": Case(
        [package("p", 5, at=-DAY_MS), gift("g", 1, at=100)],
        [(1, (("g", 1),), None), (1, (("p", 1),), None)],
    ),
    "packages-oldest-first": Case(
        [package("new", 3, at=300), package("old", 3, at=100), package("mid", 3, at=200)],
        [(4, (("old", 3), ("mid", 1)), None), (5, (("mid", 2), ("new", 3)), None)],
    ),
    "same-time-ties-by-id": Case(
        [package("b", 1), package("a", 1)],
        [(2, (("a", 1), ("b", 1)), None)],
    ),
    "expired-skipped": Case(
        [
            gift("g-old", 5, expires=-1),
            package("p-old", 5, at=1, expires=-DAY_MS),
            package("p", 5, at=2),
        ],
        [(2, (("p", 2),), None)],
    ),
    "void-and-refunded-skipped": Case(
        [gift("g", 5), package("a", 5, at=1), package("b", 5, at=2)],
        [(3, (("b", 3),), None)],
        freeze=["a"],
        void=["g"],
    ),
    "multi-bucket-span-in-one-batch": Case(
        [gift("g", 3), package("p1", 4, at=1), package("p2", 5, at=2)],
        [(10, (("g", 3), ("p1", 4), ("p2", 3)), None), (1, (("p2", 1),), None)],
    ),
    "partial-grant-at-zero": Case(
        [gift("g", 2), package("p", 4, at=1)],
        [(10, (("g", 2), ("p", 4)), Refusal.EXHAUSTED), (1, (), Refusal.EXHAUSTED)],
    ),
    "all-expired-says-expired": Case(
        [package("p", 5, expires=-1), gift("g", 1)],
        [(1, (("g", 1),), None), (1, (), Refusal.EXPIRED)],
    ),
    "no-bucket-says-no-balance": Case([], [(1, (), Refusal.NO_BALANCE)]),
    "only-refunded-says-no-balance": Case(
        [package("p", 5)], [(1, (), Refusal.NO_BALANCE)], freeze=["p"]
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_deduction_order(client, case: Case):
    store, model = BalanceStore(client), BalanceModel()
    for spec in case.buckets:
        assert await store.credit("ent-1", spec) is True
        model.credit(spec)
    if case.freeze:
        await store.freeze("ent-1", case.freeze)
        model.freeze(case.freeze)
    if case.void:
        await store.void_gifts("ent-1", case.void, recharge=False)
    for n, takes, reason in case.debits:
        debit = await store.debit("ent-1", n)
        assert (debit.takes, debit.reason) == (takes, reason)
        assert debit.granted == sum(k for _, k in takes)
        if not case.void:  # the model's void is covered by the stateful test
            expected = model.debit(n, debit.now)
            assert (expected.takes, expected.reason) == (takes, reason)


async def test_suspended_is_refused_whatever_the_balance(client):
    store = BalanceStore(client)
    await store.credit("ent-s", gift("g", 5))
    assert await store.set_suspended("ent-s", True) is False
    debit = await store.debit("ent-s", 1)
    assert (debit.granted, debit.reason) == (0, Refusal.SUSPENDED)
    assert (await store.snapshot("ent-s")).reason is Refusal.SUSPENDED
    assert await store.set_suspended("ent-s", False) is True
    assert (await store.debit("ent-s", 1)).takes == (("g", 1),)


async def test_expiry_boundary_by_redis_time(client):
    """A bucket expiring at T serves a debit whose Redis TIME is T-1 and not one at T.

    The scripts read the clock themselves, so the test debits in a tight loop across T and
    classifies every debit by the `now` the script reports; it retries until it has seen
    debits at exactly T-1 and exactly T.
    """
    store = BalanceStore(client)
    for attempt in range(30):
        enterprise = f"edge-{attempt}"
        start = (await store.snapshot(enterprise)).now
        boundary = start + 25
        spec = package("p", 10**6, expires=0)
        edge = BucketSpec(
            id="edge", kind=spec.kind, granted=10**6, expires_at=boundary, ordered_at=start
        )
        await store.credit(enterprise, edge)
        await store.credit(enterprise, package("later", 10**6, at=start))
        seen: dict[int, set[str]] = {}
        now = start
        while now <= boundary + 2:
            debit = await store.debit(enterprise, 1)
            now = debit.now
            seen.setdefault(now, set()).add(debit.takes[0][0])
        for moment, buckets in seen.items():
            assert buckets == ({"edge"} if moment < boundary else {"later"}), moment
        if boundary - 1 in seen and boundary in seen:
            return
    pytest.fail("never observed debits at exactly T-1 and T in 30 attempts")
