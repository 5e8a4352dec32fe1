"""Test 2: random operation sequences against the Lua scripts and the reference model.

After every step the two agree on every bucket, the balance and the refusal reason;
``used <= granted`` holds; and the PV the buckets have used equals the PV debits granted,
less what was given back, plus what voided gifts charged again.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from metering import BalanceStore, BucketConflict, ScriptFailed
from metering.buckets import BucketKind, BucketSpec
from metering.model import BalanceModel
from metering.scripts import RedisClient
from pvgate.embedded import RedisServer
from tests.conftest import cluster_client, single_client
from tests.helpers import DAY_MS, T0

IDS = ["b0", "b1", "b2", "b3", "b4", "b5"]
_enterprises = itertools.count()


class MeteringMachine(RuleBasedStateMachine):
    # Set by the test: makes a client of the topology under test.
    connect: Callable[[], RedisClient]

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.client = self.loop.run_until_complete(_make(type(self).connect))
        self.store = BalanceStore(self.client)
        self.model = BalanceModel()
        self.enterprise = f"sm-{next(_enterprises)}"
        self.consumed = 0  # granted - given back + recharged

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.client.aclose())
        self.loop.close()

    @rule(
        bucket_id=st.sampled_from(IDS),
        kind=st.sampled_from(BucketKind),
        granted=st.integers(1, 20),
        at=st.integers(0, 3),
        expired=st.booleans(),
        order=st.sampled_from(["", "o1", "o2"]),
    )
    def credit(self, bucket_id, kind, granted, at, expired, order):
        spec = BucketSpec(
            id=bucket_id,
            kind=kind,
            granted=granted,
            ordered_at=T0 + at,
            order_id=order,
            expires_at=T0 + (-DAY_MS if expired else DAY_MS),
        )
        expected = self.model.credit(spec)
        if expected < 0:
            with pytest.raises(BucketConflict):
                self.run(self.store.credit(self.enterprise, spec))
        else:
            assert self.run(self.store.credit(self.enterprise, spec)) is (expected == 1)

    @rule(n=st.integers(1, 30))
    def debit(self, n):
        debit = self.run(self.store.debit(self.enterprise, n))
        expected = self.model.debit(n, debit.now)
        assert (debit.granted, debit.reason, debit.takes) == (
            expected.granted,
            expected.reason,
            expected.takes,
        )
        assert debit.granted == sum(k for _, k in debit.takes) <= n
        self.consumed += debit.granted

    @rule(bucket_id=st.sampled_from(IDS), k=st.integers(1, 5))
    def give_back(self, bucket_id, k):
        back = self.run(self.store.give_back(self.enterprise, bucket_id, k))
        assert back == self.model.give_back(bucket_id, k)
        self.consumed -= back

    @rule(ids=st.lists(st.sampled_from(IDS), min_size=1, max_size=3, unique=True))
    def freeze(self, ids):
        try:
            expected = self.model.freeze(ids)
        except ValueError:
            with pytest.raises(ScriptFailed, match="not a package"):
                self.run(self.store.freeze(self.enterprise, ids))
            return
        assert self.run(self.store.freeze(self.enterprise, ids)) == expected

    @rule(
        ids=st.lists(st.sampled_from(IDS), min_size=1, max_size=3, unique=True),
        recharge=st.booleans(),
    )
    def void(self, ids, recharge):
        now = self.run(self.store.snapshot(self.enterprise)).now
        voided_before = {b.id for b in self.model.buckets() if b.status == "void"}
        try:
            expected = self.model.void_gifts(ids, recharge=recharge, now=now)
        except ValueError:
            with pytest.raises(ScriptFailed, match="not a gift"):
                self.run(self.store.void_gifts(self.enterprise, ids, recharge=recharge))
            return
        result = self.run(self.store.void_gifts(self.enterprise, ids, recharge=recharge))
        assert result == expected
        # The answer repeats what gifts voided earlier charged; only new voids charge now.
        self.consumed += sum(self.model.recharged_by(g) for g in ids if g not in voided_before)

    @rule(
        bucket_id=st.sampled_from(IDS),
        delta=st.integers(-10, 10),
        adjustment=st.sampled_from(["a1", "a2", "a3"]),
    )
    def adjust(self, bucket_id, delta, adjustment):
        try:
            expected = self.model.adjust(bucket_id, delta, adjustment)
        except ValueError:
            with pytest.raises(ScriptFailed, match="adjust"):
                self.run(self.store.adjust(self.enterprise, bucket_id, delta, adjustment))
            return
        got = self.run(self.store.adjust(self.enterprise, bucket_id, delta, adjustment))
        assert got == expected

    @rule(flag=st.booleans())
    def suspend(self, flag):
        before = self.run(self.store.set_suspended(self.enterprise, flag))
        assert before == self.model.set_suspended(flag)

    @invariant()
    def agrees_with_model(self):
        snapshot = self.run(self.store.snapshot(self.enterprise))
        assert list(snapshot.buckets) == self.model.buckets()
        assert snapshot.available == self.model.available(snapshot.now)
        assert snapshot.reason == self.model.reason(snapshot.now)
        assert all(0 <= b.used <= b.granted for b in snapshot.buckets)
        assert sum(b.used for b in snapshot.buckets) == self.consumed


async def _make(connect):
    client = connect()
    await client.ping()
    return client


@pytest.mark.timeout(600)
def test_scripts_match_the_reference_model(servers):
    def connect():
        if isinstance(servers, RedisServer):
            return single_client(servers)
        return cluster_client(servers)

    MeteringMachine.connect = staticmethod(connect)
    MeteringMachine.TestCase.settings = settings(
        max_examples=60,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    MeteringMachine.TestCase().runTest()
