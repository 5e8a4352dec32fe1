"""The refund rules of docs/rules.md §6: vector R1 verbatim, a case per rule, a reference model."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing import errors
from billing.rules.refunds import (
    EnterpriseState,
    GiftState,
    InvoiceState,
    OrderKind,
    PackageState,
    RefundOrder,
    package_refund_fen,
    quote_refund,
    refund_line,
    split_cash,
)

SH = ZoneInfo("Asia/Shanghai")
PAID = datetime(2027, 3, 10, 10, 0, tzinfo=SH)
NOW = PAID + timedelta(days=5)
ENTERPRISE = EnterpriseState(enterprise_id="e1")


def pkg(package_id, used=0, granted=1_000_000, at=PAID, **flags):
    return PackageState(id=package_id, granted=granted, used=used, ordered_at=at, **flags)


def order(cash=9_000_000, **fields):
    return RefundOrder(order_id="o1", paid_at=fields.pop("paid_at", PAID), cash_fen=cash, **fields)


def refund(packages, requested=None, *, gifts=(), others=(), now=NOW, enterprise=ENTERPRISE,
           **order_fields):  # fmt: skip
    return quote_refund(
        order=order(**order_fields),
        enterprise=enterprise,
        packages=packages,
        requested=[p.id for p in packages] if requested is None else requested,
        gifts=gifts,
        other_packages=others,
        now=now,
    )


def refunds_by_package(quote):
    return {line.package_id: line.refund_fen for line in quote.lines}


def r1_packages():
    return [pkg("A", used=1_000_000), pkg("B", used=490_000), pkg("C")]


R1_GIFT = GiftState(id="gift-o1", used=10_000)


# ---- test vector R1 (docs/rules.md §6), verbatim ------------------------------------------


def test_r1_worked_example():
    """Three pv_1m at 3,000,000 fen, gift 10,000 PV all used, A used 1,000,000, B 490,000."""
    q = refund(r1_packages(), gifts=[R1_GIFT], cash=3 * 3_000_000)
    a, b, c = q.lines
    # The gift is void; its 10,000 used PV are charged again: A is full, so B takes them.
    assert q.voided_gifts == ("gift-o1",)
    assert q.gift_used_pv == 10_000
    assert q.recharged == {"B": 10_000}
    assert q.dropped_pv == 0
    assert b.used_after == 500_000
    # A: 3,000,000 − 1,000,000 × 3 = 0 → 0 fen.
    assert (a.paid_cash_fen, a.used_after, a.refund_fen, a.cleared) == (
        3_000_000,
        1_000_000,
        0,
        True,
    )
    # B: 3,000,000 − 500,000 × 3 = 1,500,000 fen.
    assert (b.used_before, b.recharged_pv, b.refund_fen) == (490_000, 10_000, 1_500_000)
    assert not b.cleared
    # C: unused → 3,000,000 fen.
    assert (c.used_after, c.refund_fen) == (0, 3_000_000)
    # Total refunded: 4,500,000 fen (45,000.00 CNY).
    assert q.total_refund_fen == 4_500_000


# ---- one case per rule -------------------------------------------------------------------


def test_one_package_of_three_voids_every_gift_and_recharges_unrefunded_packages_too():
    """Refunding only C still voids the order's gift; B (kept) takes the re-charge."""
    q = refund(r1_packages(), ["C"], gifts=[R1_GIFT])
    assert [line.package_id for line in q.lines] == ["C"]
    assert q.voided_gifts == ("gift-o1",)
    assert q.recharged == {"B": 10_000}
    assert q.total_refund_fen == 3_000_000


def test_bought_31_january_the_window_ends_28_february_not_on_day_31():
    """31 Jan + 1 month is 28 Feb (2027): the last instant before it is in, day 31 is out."""
    paid = datetime(2027, 1, 31, 10, tzinfo=SH)
    end = datetime(2027, 2, 28, 10, tzinfo=SH)
    last_moment = refund([pkg("A", at=paid)], paid_at=paid, cash=3_000_000,
                         now=end - timedelta(seconds=1))  # fmt: skip
    assert last_moment.total_refund_fen == 3_000_000
    assert last_moment.window_end == end
    for late in (end, paid + timedelta(days=31)):
        with pytest.raises(errors.RefundWindowClosed) as info:
            refund([pkg("A", at=paid)], paid_at=paid, cash=3_000_000, now=late)
        assert info.value.window_end == end
        assert info.value.code == "refund_window_closed"


def test_bought_31_january_of_a_leap_year_the_window_runs_to_29_february():
    paid = datetime(2028, 1, 31, 10, tzinfo=SH)
    q = refund([pkg("A", at=paid)], paid_at=paid, cash=3_000_000,
               now=datetime(2028, 2, 29, 9, tzinfo=SH))  # fmt: skip
    assert q.total_refund_fen == 3_000_000


def test_invoice_issued_and_not_returned_refuses():
    """docs/rules.md §6: an issued invoice blocks the refund until it is returned."""
    with pytest.raises(errors.InvoiceNotReturned) as info:
        refund(r1_packages(), invoice=InvoiceState.ISSUED)
    assert info.value.code == "invoice_not_returned"
    assert info.value.http_status == 422


def test_invoice_returned_allows_the_refund():
    q = refund(r1_packages(), gifts=[R1_GIFT], invoice=InvoiceState.RETURNED)
    assert q.total_refund_fen == 4_500_000


def test_flagged_enterprise_is_refused_even_with_unused_packages():
    """Flagged by ops: refused whether or not the packages were used."""
    with pytest.raises(errors.EnterpriseFlagged):
        refund([pkg("A")], cash=3_000_000,
               enterprise=EnterpriseState(enterprise_id="e1", flagged=True))  # fmt: skip


def test_a_partly_used_gift_recharges_only_what_it_gave():
    """A 10,000 PV gift of which 4,000 were used: 4,000 are charged again, not 10,000."""
    q = refund([pkg("A", used=100_000)], cash=3_000_000, gifts=[GiftState(id="g", used=4_000)])
    assert q.recharged == {"A": 4_000}
    assert q.lines[0].used_after == 104_000
    assert q.total_refund_fen == 3_000_000 - 104_000 * 3


def test_recharge_beyond_the_room_left_is_dropped():
    """Packages nearly full: each takes its room, the rest of the gift usage is dropped."""
    packages = [pkg("A", used=999_000), pkg("B", used=998_000)]
    q = refund(packages, gifts=[GiftState(id="g", used=10_000)], cash=6_000_000)
    assert q.recharged == {"A": 1_000, "B": 2_000}
    assert q.dropped_pv == 7_000
    assert sum(q.recharged.values()) + q.dropped_pv == q.gift_used_pv == 10_000
    assert [line.used_after for line in q.lines] == [1_000_000, 1_000_000]
    assert q.total_refund_fen == 0


def test_cash_that_does_not_divide_by_three_gives_the_remainder_fen_to_the_first_packages():
    """8,999,000 fen over 3 packages: 2,999,667 + 2,999,667 + 2,999,666."""
    q = refund([pkg("A"), pkg("B"), pkg("C")], cash=8_999_000, voucher_fen=1_000)
    assert [line.paid_cash_fen for line in q.lines] == [2_999_667, 2_999_667, 2_999_666]
    assert q.total_refund_fen == 8_999_000


def test_the_voucher_part_is_never_refunded():
    """300,000 fen of the 9,000,000 were a voucher: each package's paid cash is 2,900,000."""
    packages = [pkg("A"), pkg("B", used=500_000), pkg("C")]
    q = refund(packages, cash=8_700_000, voucher_fen=300_000)
    assert refunds_by_package(q) == {"A": 2_900_000, "B": 1_400_000, "C": 2_900_000}
    assert q.voucher_fen == 300_000
    assert q.total_refund_fen == 8_700_000 - 500_000 * 3


def test_an_unused_package_refunds_its_full_paid_cash():
    q = refund([pkg("A")], cash=3_000_000)
    assert refunds_by_package(q) == {"A": 3_000_000}
    assert not q.lines[0].cleared


def test_usage_worth_more_than_the_paid_cash_refunds_zero_and_is_cleared():
    """1,500,000 fen paid in cash, 600,000 PV used (1,800,000 fen): 0, not −300,000."""
    q = refund([pkg("A", used=600_000)], cash=1_500_000, voucher_fen=1_500_000)
    assert q.lines[0].refund_fen == 0
    assert q.lines[0].cleared
    assert q.total_refund_fen == 0


def test_interop_orders_are_never_refunded():
    with pytest.raises(errors.InteropNotRefundable) as info:
        refund([pkg("A")], kind=OrderKind.INTEROP)
    assert info.value.code == "interop_not_refundable"


def test_interop_refusal_comes_before_the_window():
    with pytest.raises(errors.InteropNotRefundable):
        refund([pkg("A")], kind=OrderKind.INTEROP, now=PAID + timedelta(days=400))


def test_recharge_lands_first_in_an_older_package_of_another_order():
    """Deduction order is oldest first across orders: X (an older order) fills up first."""
    older = pkg("X", used=995_000, at=PAID - timedelta(days=60))
    newer = pkg("Y", used=0, at=PAID + timedelta(days=1))
    q = refund([pkg("A", used=20_000)], cash=3_000_000,
               gifts=[GiftState(id="g", used=8_000)], others=[newer, older])  # fmt: skip
    assert list(q.recharged.items()) == [("X", 5_000), ("A", 3_000)]
    assert q.lines[0].used_after == 23_000
    assert q.total_refund_fen == 3_000_000 - 23_000 * 3


def test_expired_and_refunded_packages_take_no_recharge():
    expired = pkg("X", used=0, at=PAID - timedelta(days=400), expired=True)
    q = refund([pkg("A", used=0, refunded=True), pkg("B", used=999_999)], ["B"],
               gifts=[GiftState(id="g", used=3)], others=[expired], cash=6_000_000)  # fmt: skip
    assert q.recharged == {"B": 1}
    assert q.dropped_pv == 2


def test_a_second_refund_of_the_order_finds_its_gifts_already_void():
    q = refund([pkg("A", refunded=True), pkg("B", used=10)], ["B"],
               gifts=[GiftState(id="g", used=10_000, void=True)], cash=6_000_000)  # fmt: skip
    assert q.voided_gifts == ()
    assert q.recharged == {}
    assert q.lines[0].paid_cash_fen == 3_000_000  # the split still counts A


def test_a_package_already_refunded_is_a_conflict():
    with pytest.raises(errors.Conflict):
        refund([pkg("A", refunded=True), pkg("B")], ["A"], cash=6_000_000)


@pytest.mark.parametrize("requested", [[], ["Z"], "A"])
def test_an_empty_or_foreign_package_list_is_invalid(requested):
    with pytest.raises(errors.ValidationFailed) as info:
        refund([pkg("A")], requested, cash=3_000_000)
    assert info.value.field == "package_ids"


def test_inconsistent_inputs_are_value_errors():
    with pytest.raises(ValueError, match="used"):
        pkg("A", used=2, granted=1)
    with pytest.raises(ValueError, match="twice"):
        refund([pkg("A")], cash=3_000_000, others=[pkg("A")])
    with pytest.raises(ValueError, match="timezone-aware"):
        refund([pkg("A")], cash=3_000_000, now=datetime(2027, 3, 11))


def test_split_cash_and_package_refund_helpers():
    assert split_cash(10, 3) == (4, 3, 3)
    assert split_cash(0, 2) == (0, 0)
    assert package_refund_fen(3_000_000, 1_000_001) == 0
    with pytest.raises(ValueError, match="split"):
        split_cash(10, 0)


# ---- property tests against a reference model --------------------------------------------


def reference_refund(cash, packages, requested, gift_used, others):
    """docs/rules.md §6 the slow, obvious way: one fen and one PV at a time."""
    shares = [0] * len(packages)
    for fen in range(cash):
        shares[fen % len(packages)] += 1
    live = [p for p in [*packages, *others] if not (p.expired or p.refunded)]
    live.sort(key=lambda p: (p.ordered_at, p.id))
    used = {p.id: p.used for p in live}
    recharged: Counter[str] = Counter()
    dropped = 0
    for _ in range(gift_used):
        target = next((p for p in live if used[p.id] < p.granted), None)
        if target is None:
            dropped += 1
        else:
            used[target.id] += 1
            recharged[target.id] += 1
    lines = {
        p.id: max(0, share - 3 * (p.used + recharged[p.id]))
        for p, share in zip(packages, shares, strict=True)
        if p.id in requested
    }
    return lines, dict(recharged), dropped


@st.composite
def package_states(draw, prefix, count):
    out = []
    for i in range(count):
        granted = draw(st.integers(1, 60))
        out.append(
            PackageState(
                id=f"{prefix}{i}",
                granted=granted,
                used=draw(st.integers(0, granted)),
                ordered_at=PAID + timedelta(minutes=draw(st.integers(-3, 3))),
                expired=draw(st.booleans()) if prefix == "x" else False,
            )
        )
    return out


@st.composite
def refund_cases(draw):
    packages = draw(package_states("p", draw(st.integers(1, 5))))
    others = draw(package_states("x", draw(st.integers(0, 3))))
    requested = draw(st.sets(st.sampled_from([p.id for p in packages]), min_size=1))
    gifts = draw(st.lists(st.integers(0, 80), max_size=3))
    cash = draw(st.integers(0, 600))
    return packages, others, requested, gifts, cash


@given(refund_cases())
def test_refund_matches_the_reference_model_and_keeps_its_invariants(case):
    packages, others, requested, gift_used, cash = case
    gifts = [GiftState(id=f"g{i}", used=u) for i, u in enumerate(gift_used)]
    q = refund(packages, sorted(requested), gifts=gifts, others=others, cash=cash)

    assert q.total_refund_fen <= cash
    assert all(line.refund_fen >= 0 for line in q.lines)
    assert sum(q.recharged.values()) + q.dropped_pv == sum(gift_used)

    lines, recharged, dropped = reference_refund(cash, packages, requested, sum(gift_used), others)
    assert refunds_by_package(q) == lines
    assert dict(q.recharged) == recharged
    assert q.dropped_pv == dropped


def test_times_in_other_offsets_sort_by_instant():
    # Same instant written in UTC and in Shanghai: the tie is broken by id, as in Redis.
    a = pkg("b-utc", used=0, granted=1, at=PAID.astimezone(UTC))
    b = pkg("a-sh", used=0, granted=1, at=PAID)
    q = refund([a, b], ["b-utc"], gifts=[GiftState(id="g", used=1)], cash=2)
    assert q.recharged == {"a-sh": 1}


def test_a_line_prices_its_own_used_plus_the_recharge():
    """The rule the quote and the execution share (R1's package B)."""
    line = refund_line("b", 3_000_000, 490_000, 10_000)
    assert (line.used_before, line.recharged_pv, line.used_after) == (490_000, 10_000, 500_000)
    assert (line.refund_fen, line.cleared) == (1_500_000, False)
    full = refund_line("a", 3_000_000, 999_990, 10)
    assert (full.refund_fen, full.cleared) == (0, True)
    for used_before, recharged in ((-1, 0), (0, -1)):
        with pytest.raises(ValueError, match="negative"):
            refund_line("x", 1, used_before, recharged)
