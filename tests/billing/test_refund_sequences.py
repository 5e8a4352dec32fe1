"""Property: a refund's quote and the refund executed from it agree line by line (docs/rules.md §6).

Random orders — one to three packages, gifts tied to the order, maybe an older package of
another order that takes re-charges first — random usage, then a random sequence of partial
and complete refunds of the order with more usage in between.  Each refund is quoted and
executed at once (nothing moves in between): the quote's lines, the lines the execution
answers and the ``refund_lines`` rows it booked are the same, for every refund of the
sequence, against real Redis and the ledger on SQLite and PostgreSQL.  Usage lands on
package boundaries often, so gifts re-charged to a package that a later refund takes are
common.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from billing.audit import SystemAuditor
from billing.db import Database
from billing.operations import grant_gift
from billing.refunding import execute, quote
from billing.schema import refund_lines
from metering import BalanceStore, BucketStatus
from tests.billing.support import TZ, enterprise, now, paid_order, rows

PV = 1_000_000  # a pv_1m package
FIELDS = ("package_id", "paid_cash_fen", "used_before", "recharged_pv", "used_after", "refund_fen")
_enterprises = itertools.count()


@dataclass(frozen=True)
class Scenario:
    quantity: int  # packages in the order
    gifts: tuple[int, ...]  # PV of each gift tied to the order
    older: bool  # an older package, of another order, first in the deduction order
    usage: int  # PV viewed before the first refund
    refunds: tuple[tuple[tuple[int, ...], int], ...]  # (positions refunded, PV viewed after)
    retry: bool  # each refund asked again with its key: the same answer


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    quantity = draw(st.integers(1, 3))
    gifts = tuple(draw(st.lists(st.integers(1, 30_000), min_size=1, max_size=2)))
    older = draw(st.booleans())
    # The packages filled before the first refund; the next one takes the gifts' re-charge.
    full = draw(st.integers(0, quantity + older - 1))
    usage = sum(gifts) + full * PV + draw(st.integers(-3, 40_000))
    # Refunds take packages in a random order, a random number at a time; some never.
    order = draw(st.permutations(range(quantity)))
    refunded = order[: draw(st.integers(1, quantity))]
    cuts = sorted(draw(st.sets(st.integers(1, len(refunded) - 1)))) if len(refunded) > 1 else []
    groups = [refunded[i:j] for i, j in zip([0, *cuts], [*cuts, len(refunded)], strict=True)]
    after = st.one_of(st.just(0), st.integers(1, 30_000), st.just(PV))
    refunds = tuple((tuple(group), draw(after)) for group in groups)
    return Scenario(quantity, gifts, older, max(usage, 0), refunds, draw(st.booleans()))


async def view(store: BalanceStore, enterprise_id: str, pv: int) -> None:
    """``pv`` page views, in a few script calls; at zero balance the rest are refused."""
    while pv > 0:
        debit = await store.debit(enterprise_id, min(pv, 500_000))
        if debit.granted == 0:
            return
        pv -= debit.granted


def line_tuples(lines: Any) -> list[tuple[Any, ...]]:
    """Lines (dataclasses or rows) as comparable tuples, in package order."""
    get = (lambda x, f: x[f]) if lines and isinstance(lines[0], dict) else getattr
    return sorted(tuple(get(line, f) for f in FIELDS) for line in lines)


async def play(db: Database, store: BalanceStore, audit: SystemAuditor, case: Scenario) -> None:
    enterprise_id = f"seq{next(_enterprises)}"
    await enterprise(db, audit, enterprise_id)
    if case.older:
        await paid_order(db, store, audit, enterprise_id, paid_at=now() - timedelta(days=3))
    state = await paid_order(db, store, audit, enterprise_id, quantity=case.quantity)
    order_id = state.order.id
    for pv in case.gifts:
        await grant_gift(
            db, store, audit, enterprise_id, pv=pv, reason="promo", order_id=order_id,
            expires_at=None, tz=TZ,
        )  # fmt: skip
    await view(store, enterprise_id, case.usage)
    for step, (positions, viewed_after) in enumerate(case.refunds):
        ids = [state.packages[i].id for i in positions]
        quoted = await quote(db, store, order_id, ids, now=now(), tz=TZ)
        result = await execute(
            db, store, audit, order_id, ids, key=f"{enterprise_id}-{step}", actor="prop",
            now=now(), tz=TZ,
        )  # fmt: skip
        booked = await rows(db, refund_lines, refund_id=result.refund_id)
        assert line_tuples(quoted.lines) == line_tuples(result.lines) == line_tuples(booked), (
            f"refund {step} of {case}"
        )
        assert quoted.total_refund_fen == result.total_refund_fen
        buckets = {b.id: b for b in (await store.snapshot(enterprise_id)).buckets}
        for line in result.lines:
            frozen = buckets[line.package_id]
            assert (frozen.status, frozen.used) == (BucketStatus.REFUNDED, line.used_after)
        if case.retry:
            assert await execute(
                db, store, audit, order_id, ids, key=f"{enterprise_id}-{step}", actor="prop",
                now=now(), tz=TZ,
            ) == result  # fmt: skip
        await view(store, enterprise_id, viewed_after)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=scenarios())
# The reported case: A full, the gift's PV re-charged to B by the first refund, B refunded next.
@example(case=Scenario(2, (20,), False, PV + 25, (((0,), 0), ((1,), 0)), False))
# Two gifts, the older package takes part of the re-charge, the order's first the rest.
@example(case=Scenario(3, (300, 9_000), True, 9_300 + PV - 100, (((1, 2), 7), ((0,), 0)), True))
async def test_quote_and_execution_agree_for_every_refund_of_a_sequence(
    db: Database, store: BalanceStore, audit: SystemAuditor, case: Scenario
):
    await play(db, store, audit, case)
