"""Prices and purchase preconditions (docs/rules.md §1, §2, §7): pure functions, money in int fen.

PV packages are sold by SKU; WeCom interop accounts per account per year in bands, priced
``graduated`` (each account at the band it falls in) or ``volume`` (every account at the
band of the total).  Nothing here reads a clock or a store: the caller passes what it knows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal, get_args

from billing.errors import (
    AgreementNotAccepted,
    EnterpriseNotVerified,
    RestrictedIndustry,
    TooManyAccounts,
    ValidationFailed,
    VoucherNotAllowed,
)

# What one PV costs inside every package; a refund charges used PV at this price (docs/rules.md §6).
PV_UNIT_PRICE_FEN: Final = 3


@dataclass(frozen=True, slots=True)
class Sku:
    """A PV package on sale."""

    code: str
    pv: int
    price_fen: int

    @property
    def fen_per_pv(self) -> int:
        return self.price_fen // self.pv


SKUS: Final[Mapping[str, Sku]] = MappingProxyType(
    {
        sku.code: sku
        for sku in (
            Sku("pv_1m", 1_000_000, 3_000_000),
            Sku("pv_3m", 3_000_000, 9_000_000),
        )
    }
)


@dataclass(frozen=True, slots=True)
class InteropBand:
    """Accounts ``first``..``last`` (inclusive) cost ``fen_per_account_year`` each per year."""

    first: int
    last: int
    fen_per_account_year: int

    def count_within(self, accounts: int) -> int:
        """How many of accounts 1..``accounts`` fall in this band."""
        return max(0, min(accounts, self.last) - self.first + 1)


INTEROP_BANDS: Final[tuple[InteropBand, ...]] = (
    InteropBand(1, 5, 5_000),
    InteropBand(6, 200, 4_000),
    InteropBand(201, 500, 3_000),
    InteropBand(501, 1_000, 2_000),
    InteropBand(1_001, 10_000, 1_000),
)
MAX_SELF_SERVICE_ACCOUNTS: Final = INTEROP_BANDS[-1].last

PricingMode = Literal["graduated", "volume"]
PRICING_MODES: Final[tuple[str, ...]] = get_args(PricingMode)

# Industry codes as enterprises record them; compared case-insensitively.
RESTRICTED_INDUSTRIES: Final = frozenset({"p2p_lending", "medical"})


@dataclass(frozen=True, slots=True, kw_only=True)
class QuoteLine:
    """One line of a quote: ``quantity`` × ``unit_price_fen`` = ``amount_fen``."""

    item: str
    description: str
    quantity: int
    unit_price_fen: int
    amount_fen: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PackageQuote:
    """The price of ``quantity`` packages of one SKU; each package becomes its own bucket."""

    sku: str
    quantity: int
    unit_price_fen: int  # one package
    fen_per_pv: int
    pv_per_package: int
    total_pv: int
    total_fen: int
    lines: tuple[QuoteLine, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class InteropQuote:
    """The price of ``accounts`` interop accounts for ``years`` years."""

    accounts: int
    years: int
    mode: PricingMode
    fen_per_year: int
    total_fen: int
    lines: tuple[QuoteLine, ...]


def _positive_int(value: object, field: str) -> int:
    # bool is an int subclass, and `true` must not buy one package.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationFailed(field, f"must be an integer, got {value!r}")
    if value < 1:
        raise ValidationFailed(field, f"must be at least 1, got {value}")
    return value


def get_sku(sku: object) -> Sku:
    """The SKU named ``sku``, or `ValidationFailed` on field ``sku``."""
    found = SKUS.get(sku) if isinstance(sku, str) else None
    if found is None:
        raise ValidationFailed("sku", f"unknown SKU {sku!r}; expected one of {', '.join(SKUS)}")
    return found


def quote_packages(sku: str, quantity: int) -> PackageQuote:
    """Price ``quantity`` (≥ 1) packages of ``sku`` (docs/rules.md §1.1)."""
    item = get_sku(sku)
    quantity = _positive_int(quantity, "quantity")
    total = item.price_fen * quantity
    line = QuoteLine(
        item=item.code,
        description=f"{item.pv:,} PV package",
        quantity=quantity,
        unit_price_fen=item.price_fen,
        amount_fen=total,
    )
    return PackageQuote(
        sku=item.code,
        quantity=quantity,
        unit_price_fen=item.price_fen,
        fen_per_pv=item.fen_per_pv,
        pv_per_package=item.pv,
        total_pv=item.pv * quantity,
        total_fen=total,
        lines=(line,),
    )


def interop_band(accounts: int) -> InteropBand:
    """The band that account number ``accounts`` (1-based) falls in."""
    for band in INTEROP_BANDS:
        if band.first <= accounts <= band.last:
            return band
    raise ValueError(f"no interop band holds account {accounts}")


def _band_line(band: InteropBand, count: int, years: int) -> QuoteLine:
    unit = band.fen_per_account_year * years
    return QuoteLine(
        item=f"interop_{band.first}_{band.last}",
        description=(
            f"interop accounts (band {band.first}-{band.last}) at "
            f"{band.fen_per_account_year} fen/account/year × {years} year(s)"
        ),
        quantity=count,
        unit_price_fen=unit,
        amount_fen=unit * count,
    )


def quote_interop(accounts: int, years: int = 1, mode: PricingMode = "graduated") -> InteropQuote:
    """Price ``accounts`` WeCom interop accounts for ``years`` years (docs/rules.md §1.2).

    ``graduated``: each account is priced by the band it falls in, one line per band used.
    ``volume``: every account at the band of the total, one line.  More than
    `MAX_SELF_SERVICE_ACCOUNTS` raises `TooManyAccounts`; fewer than 1 `ValidationFailed`.
    """
    accounts = _positive_int(accounts, "accounts")
    years = _positive_int(years, "years")
    if mode not in PRICING_MODES:
        raise ValidationFailed("mode", f"unknown pricing mode {mode!r}; expected {PRICING_MODES}")
    if accounts > MAX_SELF_SERVICE_ACCOUNTS:
        raise TooManyAccounts(accounts, MAX_SELF_SERVICE_ACCOUNTS)
    if mode == "volume":
        lines: tuple[QuoteLine, ...] = (_band_line(interop_band(accounts), accounts, years),)
    else:
        lines = tuple(
            _band_line(band, band.count_within(accounts), years)
            for band in INTEROP_BANDS
            if band.count_within(accounts)
        )
    total = sum(line.amount_fen for line in lines)
    return InteropQuote(
        accounts=accounts,
        years=years,
        mode=mode,
        fen_per_year=total // years,
        total_fen=total,
        lines=lines,
    )


def is_restricted_industry(industry: str) -> bool:
    """Whether an enterprise of ``industry`` may not buy (docs/rules.md §1.1: P2P, medical)."""
    return industry.strip().casefold() in RESTRICTED_INDUSTRIES


def check_purchase(
    *,
    verified: bool,
    industry: str,
    agreement_accepted: object,
    voucher: object = None,
) -> None:
    """Refuse a purchase (PV packages or interop accounts) that docs/rules.md §1–§2 does not allow.

    Checked in this order, the first failure raised: the enterprise's real-name
    verification (`EnterpriseNotVerified`), its industry (`RestrictedIndustry`), the
    service agreement — only the literal ``True`` accepts it (`AgreementNotAccepted`) — and
    the absence of a voucher: anything but ``None`` or ``""`` names one (`VoucherNotAllowed`).
    """
    if verified is not True:
        raise EnterpriseNotVerified()
    if is_restricted_industry(industry):
        raise RestrictedIndustry(industry)
    if agreement_accepted is not True:
        raise AgreementNotAccepted()
    if voucher is not None and voucher != "":
        raise VoucherNotAllowed()
