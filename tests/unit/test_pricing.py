"""Prices and purchase preconditions: docs/rules.md §7 vector P1 verbatim, bands, refusals."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing import errors
from billing.rules.pricing import (
    INTEROP_BANDS,
    MAX_SELF_SERVICE_ACCOUNTS,
    PV_UNIT_PRICE_FEN,
    RESTRICTED_INDUSTRIES,
    SKUS,
    check_purchase,
    quote_interop,
    quote_packages,
)

# ---- test vector P1 (docs/rules.md §7), verbatim ------------------------------------------------


def test_p1_pv_1m_times_1():
    assert quote_packages("pv_1m", 1).total_fen == 3_000_000


def test_p1_pv_3m_times_2():
    assert quote_packages("pv_3m", 2).total_fen == 18_000_000


@pytest.mark.parametrize(
    ("accounts", "fen"),
    [
        (1, 5_000),
        (5, 25_000),
        (6, 29_000),
        (200, 25_000 + 195 * 4_000),
        (200, 805_000),
        (10_000, 25_000 + 780_000 + 900_000 + 1_000_000 + 9_000_000),
        (10_000, 11_705_000),
    ],
)
def test_p1_interop_one_year_graduated(accounts, fen):
    assert quote_interop(accounts, 1, "graduated").total_fen == fen


def test_p1_interop_10001_refused():
    with pytest.raises(errors.TooManyAccounts) as info:
        quote_interop(10_001)
    assert info.value.code == "interop_quantity_exceeds_self_service"
    assert info.value.limit == 10_000


@pytest.mark.parametrize(
    ("accounts", "fen"),
    [(5, 25_000), (6, 24_000), (200, 800_000), (201, 603_000), (10_000, 10_000_000)],
)
def test_p1_interop_one_year_volume(accounts, fen):
    assert quote_interop(accounts, 1, "volume").total_fen == fen


# ---- packages ----------------------------------------------------------------------------


def test_sku_table_matches_spec():
    assert {code: (s.pv, s.price_fen) for code, s in SKUS.items()} == {
        "pv_1m": (1_000_000, 3_000_000),
        "pv_3m": (3_000_000, 9_000_000),
    }
    assert all(s.fen_per_pv == PV_UNIT_PRICE_FEN == 3 for s in SKUS.values())


def test_package_quote_carries_unit_price_pv_and_lines():
    q = quote_packages("pv_3m", 2)
    assert (q.sku, q.quantity, q.unit_price_fen, q.pv_per_package) == (
        "pv_3m",
        2,
        9_000_000,
        3_000_000,
    )
    assert (q.total_pv, q.fen_per_pv) == (6_000_000, 3)
    assert [(li.item, li.quantity, li.unit_price_fen, li.amount_fen) for li in q.lines] == [
        ("pv_3m", 2, 9_000_000, 18_000_000)
    ]


@pytest.mark.parametrize("sku", ["pv_2m", "", "PV_1M", None, 1])
def test_unknown_sku_is_a_validation_error_on_sku(sku):
    with pytest.raises(errors.ValidationFailed) as info:
        quote_packages(sku, 1)
    assert (info.value.field, info.value.code, info.value.http_status) == (
        "sku",
        "invalid_request",
        400,
    )


@pytest.mark.parametrize("quantity", [0, -1, 1.0, "1", True, None])
def test_quantity_must_be_a_positive_int(quantity):
    with pytest.raises(errors.ValidationFailed) as info:
        quote_packages("pv_1m", quantity)
    assert info.value.field == "quantity"


# ---- interop -----------------------------------------------------------------------------


def test_graduated_lines_show_each_band_used():
    q = quote_interop(6)
    assert [(li.item, li.quantity, li.unit_price_fen, li.amount_fen) for li in q.lines] == [
        ("interop_1_5", 5, 5_000, 25_000),
        ("interop_6_200", 1, 4_000, 4_000),
    ]
    assert q.mode == "graduated"


def test_volume_is_one_line_at_the_band_of_the_total():
    q = quote_interop(201, mode="volume")
    assert [(li.item, li.quantity, li.unit_price_fen) for li in q.lines] == [
        ("interop_201_500", 201, 3_000)
    ]


def test_several_years_multiply_the_yearly_price():
    q = quote_interop(6, years=3)
    assert (q.fen_per_year, q.total_fen) == (29_000, 87_000)
    assert q.lines[1].unit_price_fen == 12_000


@pytest.mark.parametrize(("field", "kwargs"), [
    ("accounts", {"accounts": 0}),
    ("accounts", {"accounts": -5}),
    ("years", {"accounts": 1, "years": 0}),
    ("mode", {"accounts": 1, "mode": "tiered"}),
])  # fmt: skip
def test_interop_bad_input_names_the_field(field, kwargs):
    with pytest.raises(errors.ValidationFailed) as info:
        quote_interop(**kwargs)
    assert info.value.field == field


def test_bands_are_contiguous_from_one_to_the_self_service_limit():
    assert INTEROP_BANDS[0].first == 1
    for lower, upper in itertools.pairwise(INTEROP_BANDS):
        assert upper.first == lower.last + 1
    assert INTEROP_BANDS[-1].last == MAX_SELF_SERVICE_ACCOUNTS == 10_000


def naive_fen_per_account(n: int) -> int:
    """Price of account number n, read straight off the docs/rules.md §1.2 table."""
    if n <= 5:
        return 5_000
    if n <= 200:
        return 4_000
    if n <= 500:
        return 3_000
    if n <= 1000:
        return 2_000
    return 1_000


@given(st.integers(1, MAX_SELF_SERVICE_ACCOUNTS))
def test_graduated_is_the_sum_of_each_accounts_own_band_price(n):
    assert quote_interop(n).total_fen == sum(naive_fen_per_account(k) for k in range(1, n + 1))


@given(st.integers(1, MAX_SELF_SERVICE_ACCOUNTS - 1))
def test_graduated_total_never_decreases_with_more_accounts(n):
    assert quote_interop(n + 1).total_fen >= quote_interop(n).total_fen


@given(st.integers(1, MAX_SELF_SERVICE_ACCOUNTS), st.integers(1, 5))
def test_volume_prices_every_account_at_the_band_of_the_total(n, years):
    assert quote_interop(n, years, "volume").total_fen == n * naive_fen_per_account(n) * years


# ---- purchase preconditions --------------------------------------------------------------

OK: dict[str, Any] = {
    "verified": True,
    "industry": "retail",
    "agreement_accepted": True,
    "voucher": None,
}


def test_a_verified_unrestricted_buyer_with_the_agreement_and_no_voucher_may_buy():
    check_purchase(**OK)
    check_purchase(**{**OK, "voucher": ""})


@pytest.mark.parametrize(("change", "error", "code"), [
    ({"verified": False}, errors.EnterpriseNotVerified, "enterprise_not_verified"),
    ({"industry": "p2p_lending"}, errors.RestrictedIndustry, "restricted_industry"),
    ({"industry": " Medical "}, errors.RestrictedIndustry, "restricted_industry"),
    ({"agreement_accepted": False}, errors.AgreementNotAccepted, "agreement_not_accepted"),
    ({"agreement_accepted": "true"}, errors.AgreementNotAccepted, "agreement_not_accepted"),
    ({"agreement_accepted": 1}, errors.AgreementNotAccepted, "agreement_not_accepted"),
    ({"voucher": "SPRING50"}, errors.VoucherNotAllowed, "voucher_not_allowed"),
])  # fmt: skip
def test_each_precondition_fails_with_its_own_error(change, error, code):
    with pytest.raises(error) as info:
        check_purchase(**{**OK, **change})
    assert info.value.code == code
    assert info.value.http_status == 422
    assert isinstance(info.value, errors.Refused)


def test_restricted_industries_are_those_of_the_spec():
    assert {"p2p_lending", "medical"} <= RESTRICTED_INDUSTRIES


def test_first_failing_precondition_is_reported():
    with pytest.raises(errors.EnterpriseNotVerified):
        check_purchase(verified=False, industry="medical", agreement_accepted=False, voucher="x")


# ---- the error classes themselves --------------------------------------------------------

ALL_ERRORS = [
    (errors.ValidationFailed("f", "bad"), "invalid_request", 400),
    (errors.AgreementNotAccepted(), "agreement_not_accepted", 422),
    (errors.VoucherNotAllowed(), "voucher_not_allowed", 422),
    (errors.EnterpriseNotVerified(), "enterprise_not_verified", 422),
    (errors.RestrictedIndustry("medical"), "restricted_industry", 422),
    (errors.TooManyAccounts(10_001, 10_000), "interop_quantity_exceeds_self_service", 422),
    (
        errors.RefundWindowClosed("o1", datetime(2027, 2, 28, tzinfo=UTC)),
        "refund_window_closed",
        422,
    ),
    (errors.InteropNotRefundable(), "interop_not_refundable", 422),
    (errors.InvoiceNotReturned("o1"), "invoice_not_returned", 422),
    (errors.EnterpriseFlagged(), "enterprise_flagged", 422),
    (errors.NotFound(), "not_found", 404),
    (errors.Conflict(), "conflict", 409),
]


@pytest.mark.parametrize(("exc", "code", "status"), ALL_ERRORS, ids=[c for _, c, _ in ALL_ERRORS])
def test_every_error_has_a_stable_code_a_4xx_status_and_a_message(exc, code, status):
    assert isinstance(exc, errors.BillingError)
    assert (exc.code, exc.http_status) == (code, status)
    assert exc.message
    assert str(exc) == exc.message


def test_codes_are_unique():
    codes = [code for _, code, _ in ALL_ERRORS]
    assert len(set(codes)) == len(codes)
