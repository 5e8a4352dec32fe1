"""Test 7 (idempotent credit) and the other single-call operations of BalanceStore."""

from __future__ import annotations

import pytest

from metering import BalanceStore, BucketConflict, InvalidIdentifier, ScriptFailed
from metering.buckets import BucketStatus, Refusal
from tests.helpers import gift, package


async def test_credit_twice_makes_one_bucket(client):
    store = BalanceStore(client)
    assert await store.credit("ent-7", package("p", 1000, order="o1")) is True
    assert await store.credit("ent-7", package("p", 1000, order="o1")) is False
    snapshot = await store.snapshot("ent-7")
    assert [(b.id, b.granted, b.used) for b in snapshot.buckets] == [("p", 1000, 0)]
    assert snapshot.available == 1000


async def test_credit_with_other_terms_is_a_conflict_and_changes_nothing(client):
    store = BalanceStore(client)
    await store.credit("ent-7", package("p", 1000, order="o1"))
    await store.debit("ent-7", 10)
    with pytest.raises(BucketConflict, match="'p'"):
        await store.credit("ent-7", package("p", 2000, order="o1"))
    (bucket,) = (await store.snapshot("ent-7")).buckets
    assert (bucket.granted, bucket.used) == (1000, 10)


async def test_credit_after_exhaustion_unblocks(client):
    store = BalanceStore(client)
    await store.credit("ent-u", gift("g", 1))
    await store.debit("ent-u", 1)
    assert (await store.debit("ent-u", 1)).reason is Refusal.EXHAUSTED  # now cached
    await store.credit("ent-u", package("p", 2))
    assert (await store.debit("ent-u", 1)).takes == (("p", 1),)


async def test_give_back_returns_to_the_bucket_and_never_below_zero(client):
    store = BalanceStore(client)
    await store.credit("ent-g", gift("g", 2))
    await store.debit("ent-g", 2)
    assert (await store.debit("ent-g", 1)).reason is Refusal.EXHAUSTED
    assert await store.give_back("ent-g", "g", 1) == 1
    assert (await store.debit("ent-g", 1)).takes == (("g", 1),)
    assert await store.give_back("ent-g", "g", 5) == 2
    assert await store.give_back("ent-g", "missing", 1) == 0
    assert (await store.snapshot("ent-g")).buckets[0].used == 0


async def test_freeze_reads_final_used_stops_the_bucket_and_is_idempotent(client):
    store = BalanceStore(client)
    await store.credit("ent-f", package("a", 10))
    await store.credit("ent-f", package("b", 10, at=1))
    await store.debit("ent-f", 12)
    assert await store.freeze("ent-f", ["a", "b", "nope"]) == {"a": 10, "b": 2, "nope": -1}
    assert await store.give_back("ent-f", "b", 1) == 0  # a frozen bucket's used is final
    assert await store.freeze("ent-f", ["b"]) == {"b": 2}
    debit = await store.debit("ent-f", 1)
    assert (debit.granted, debit.reason) == (0, Refusal.NO_BALANCE)
    statuses = {b.id: b.status for b in (await store.snapshot("ent-f")).buckets}
    assert statuses == {"a": BucketStatus.REFUNDED, "b": BucketStatus.REFUNDED}


async def test_freeze_refuses_gifts_and_void_refuses_packages_atomically(client):
    store = BalanceStore(client)
    await store.credit("ent-x", gift("g", 5))
    await store.credit("ent-x", package("p", 5))
    with pytest.raises(ScriptFailed, match="not a package"):
        await store.freeze("ent-x", ["p", "g"])
    with pytest.raises(ScriptFailed, match="not a gift"):
        await store.void_gifts("ent-x", ["g", "p"], recharge=True)
    snapshot = await store.snapshot("ent-x")
    assert {b.status for b in snapshot.buckets} == {BucketStatus.ACTIVE}


async def test_void_gifts_recharges_packages_once_and_answers_the_same_again(client):
    """docs/rules.md §6 at small scale: A full, so B takes the gift's used PV."""
    store = BalanceStore(client)
    await store.credit("ent-v", gift("gift", 10, order="o"))
    await store.credit("ent-v", package("A", 100, at=1, order="o"))
    await store.credit("ent-v", package("B", 100, at=2, order="o"))
    await store.debit("ent-v", 10 + 100 + 49)
    result = await store.void_gifts("ent-v", ["gift"], recharge=True)
    assert (result.gifts_used, result.recharged, result.dropped) == ({"gift": 10}, {"B": 10}, 0)
    again = await store.void_gifts("ent-v", ["gift"], recharge=True)
    assert again == result  # a retried refund reads the same re-charge, charged once
    used = {b.id: b.used for b in (await store.snapshot("ent-v")).buckets}
    assert used == {"gift": 10, "A": 100, "B": 59}


async def test_snapshot_reports_available_and_buckets_in_order(client):
    store = BalanceStore(client)
    await store.credit("ent-n", package("p", 7, at=1))
    await store.credit("ent-n", gift("g", 3))
    await store.credit("ent-n", package("old", 9, expires=-1))
    snapshot = await store.snapshot("ent-n")
    assert [b.id for b in snapshot.buckets] == ["g", "old", "p"]
    assert (snapshot.available, snapshot.reason, snapshot.suspended) == (10, None, False)


@pytest.mark.parametrize("bad", ["", "a{b}", "x" * 65, "-lead", "a b", "é"])
async def test_invalid_enterprise_ids_never_become_keys(client, bad):
    with pytest.raises(InvalidIdentifier, match="enterprise_id"):
        await BalanceStore(client).debit(bad, 1)


async def test_invalid_arguments_are_script_errors(client):
    with pytest.raises(ScriptFailed, match="positive integer"):
        await BalanceStore(client).debit("ent-a", 0)
