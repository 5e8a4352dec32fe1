"""The refund of an order's packages (docs/rules.md §6), computed as a pure function.

`quote_refund` is told everything it needs — the order, the enterprise, every package's
``used`` as read at that moment, the gifts tied to the order, the enterprise's other
packages, ``now`` — and answers what the refund is, or raises the refusal.  Each line is
priced by `refund_line`, which the execution applies too, to the final ``used`` read when
the packages are frozen and the re-charge of the gifts that refund voided: a quote and the
refund booked from it agree line by line unless traffic moved in between.

The gift re-charge follows the deduction order of docs/rules.md §3 and of the metering scripts:
packages oldest first (``ordered_at`` in ms, then id), each taking at most its room.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType

from billing.errors import (
    Conflict,
    EnterpriseFlagged,
    InteropNotRefundable,
    InvoiceNotReturned,
    RefundWindowClosed,
    ValidationFailed,
)
from billing.rules.calendar import DEFAULT_TZ, Zone, refund_window_end
from billing.rules.pricing import PV_UNIT_PRICE_FEN
from metering.buckets import to_ms


class InvoiceState(StrEnum):
    NONE = "none"
    ISSUED = "issued"
    RETURNED = "returned"


class OrderKind(StrEnum):
    PV = "pv"
    INTEROP = "interop"


@dataclass(frozen=True, slots=True, kw_only=True)
class RefundOrder:
    """The order asked about.  ``cash_fen`` is the cash actually paid, voucher excluded."""

    order_id: str
    paid_at: datetime
    cash_fen: int
    voucher_fen: int = 0
    invoice: InvoiceState = InvoiceState.NONE
    kind: OrderKind = OrderKind.PV

    def __post_init__(self) -> None:
        if self.cash_fen < 0 or self.voucher_fen < 0:
            raise ValueError(f"order {self.order_id}: negative money")
        if self.paid_at.utcoffset() is None:
            raise ValueError(f"order {self.order_id}: paid_at must be timezone-aware")


@dataclass(frozen=True, slots=True, kw_only=True)
class EnterpriseState:
    enterprise_id: str
    flagged: bool = False  # by ops: suspected abuse or a breach of the service agreement


@dataclass(frozen=True, slots=True, kw_only=True)
class PackageState:
    """A package bucket as it stands: of the order, or another of the enterprise's.

    ``expired`` and ``refunded`` packages take no re-charge; a ``refunded`` package of the
    order cannot be refunded again.
    """

    id: str
    granted: int
    used: int
    ordered_at: datetime
    expired: bool = False
    refunded: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.used <= self.granted:
            raise ValueError(f"package {self.id}: used {self.used} outside 0..{self.granted}")
        if self.ordered_at.utcoffset() is None:
            raise ValueError(f"package {self.id}: ordered_at must be timezone-aware")

    @property
    def room(self) -> int:
        return self.granted - self.used

    @property
    def live(self) -> bool:
        return not (self.expired or self.refunded)


@dataclass(frozen=True, slots=True, kw_only=True)
class GiftState:
    """A gift granted with the order; ``void`` when an earlier refund already voided it."""

    id: str
    used: int
    void: bool = False

    def __post_init__(self) -> None:
        if self.used < 0:
            raise ValueError(f"gift {self.id}: negative used {self.used}")


@dataclass(frozen=True, slots=True, kw_only=True)
class RefundLine:
    """One refunded package.

    ``cleared`` is true when the usage consumed the whole paid cash, so nothing comes back
    (``paid_cash_fen - used_after × 3 ≤ 0``); every refunded package stops serving and loses
    its remaining PV either way.
    """

    package_id: str
    paid_cash_fen: int
    used_before: int
    recharged_pv: int
    used_after: int
    refund_fen: int
    cleared: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class RefundQuote:
    """What refunding the requested packages of one order comes to.

    ``recharged`` maps every package that takes back gift PV — refunded or not, of this
    order or another — to the PV it takes, in deduction order; ``dropped_pv`` found no room.
    """

    order_id: str
    window_end: datetime
    lines: tuple[RefundLine, ...]
    voided_gifts: tuple[str, ...]
    gift_used_pv: int
    recharged: Mapping[str, int]
    dropped_pv: int
    voucher_fen: int  # kept: a voucher part is never refunded
    total_refund_fen: int


def split_cash(cash_fen: int, parts: int) -> tuple[int, ...]:
    """``cash_fen`` split evenly into ``parts`` shares; the remainder fen go to the first."""
    if parts < 1 or cash_fen < 0:
        raise ValueError(f"cannot split {cash_fen} fen into {parts} parts")
    share, extra = divmod(cash_fen, parts)
    return tuple(share + (1 if i < extra else 0) for i in range(parts))


def package_refund_fen(paid_cash_fen: int, used_pv: int) -> int:
    """docs/rules.md §6 for one package: ``paid_cash - used × 3 fen``, never below 0."""
    return max(0, paid_cash_fen - used_pv * PV_UNIT_PRICE_FEN)


def deduction_order(packages: Iterable[PackageState]) -> list[PackageState]:
    """Live packages in the order the metering scripts debit them: oldest first, then id."""
    return sorted((p for p in packages if p.live), key=lambda p: (to_ms(p.ordered_at), p.id))


def recharge_gift_usage(
    owed_pv: int, packages: Iterable[PackageState]
) -> tuple[dict[str, int], int]:
    """Charge ``owed_pv`` again to ``packages``: returns (PV per package that took some, dropped).

    Live packages in deduction order each take at most their room; what is left is dropped.
    """
    recharged: dict[str, int] = {}
    left = owed_pv
    for package in deduction_order(packages):
        if left == 0:
            break
        take = min(left, package.room)
        if take:
            recharged[package.id] = take
            left -= take
    return recharged, left


def _check_refusals(
    order: RefundOrder, enterprise: EnterpriseState, now: datetime, tz: Zone
) -> datetime:
    # Unchangeable facts first, the one a customer can fix (return the invoice) last.
    if order.kind is OrderKind.INTEROP:
        raise InteropNotRefundable()
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    window_end = refund_window_end(order.paid_at, tz)
    if not now < window_end:
        raise RefundWindowClosed(order.order_id, window_end)
    if enterprise.flagged:
        raise EnterpriseFlagged()
    if order.invoice is InvoiceState.ISSUED:
        raise InvoiceNotReturned(order.order_id)
    return window_end


def _check_request(
    order: RefundOrder,
    packages: Sequence[PackageState],
    requested: Collection[str],
    others: Sequence[PackageState],
) -> frozenset[str]:
    if not packages:
        raise ValueError(f"order {order.order_id} has no packages")
    ids = [p.id for p in (*packages, *others)]
    if len(set(ids)) != len(ids):
        raise ValueError(f"order {order.order_id}: a package id appears twice")
    if isinstance(requested, str) or not requested:
        raise ValidationFailed("package_ids", "name at least one package of the order")
    wanted = frozenset(requested)
    by_id = {p.id: p for p in packages}
    unknown = sorted(wanted - by_id.keys())
    if unknown:
        raise ValidationFailed("package_ids", f"not in order {order.order_id}: {unknown}")
    again = sorted(i for i in wanted if by_id[i].refunded)
    if again:
        raise Conflict(f"already refunded: {again}")
    return wanted


def refund_line(
    package_id: str, paid_cash_fen: int, used_before: int, recharged_pv: int
) -> RefundLine:
    """One package's line: its ``used`` plus the gift PV charged to it, priced (docs/rules.md §6).

    The quote applies it to the live figures, the execution to the final ``used`` read when
    the package was frozen, less the re-charge of the gifts that refund voided: one rule,
    so a quote and the refund executed from it agree line by line.
    """
    if used_before < 0 or recharged_pv < 0:
        raise ValueError(f"package {package_id}: negative used {used_before} or re-charge")
    used_after = used_before + recharged_pv
    return RefundLine(
        package_id=package_id,
        paid_cash_fen=paid_cash_fen,
        used_before=used_before,
        recharged_pv=recharged_pv,
        used_after=used_after,
        refund_fen=package_refund_fen(paid_cash_fen, used_after),
        cleared=paid_cash_fen - used_after * PV_UNIT_PRICE_FEN <= 0,
    )


def quote_refund(
    *,
    order: RefundOrder,
    enterprise: EnterpriseState,
    packages: Sequence[PackageState],
    requested: Collection[str],
    gifts: Sequence[GiftState] = (),
    other_packages: Sequence[PackageState] = (),
    now: datetime,
    tz: Zone = DEFAULT_TZ,
) -> RefundQuote:
    """Refund the ``requested`` packages of ``order`` at ``now`` (docs/rules.md §6), or refuse.

    ``packages`` are all of the order's packages in the order's own order (position 0
    first: the remainder fen of the cash split go to the first ones); ``other_packages`` are
    the enterprise's packages outside the order (expired ones may be passed, flagged).

    Refusals, first match raised: `InteropNotRefundable`, `RefundWindowClosed` (a request at
    or after `refund_window_end` is late), `EnterpriseFlagged`, `InvoiceNotReturned`; then
    `ValidationFailed` (field ``package_ids``) for an empty request or an id outside the
    order, `Conflict` for a package already refunded.  Inconsistent inputs (duplicate ids,
    an order without packages) raise `ValueError`.

    Every gift of the order that is not void yet becomes void, and the PV it had given are
    charged again to every live package in deduction order, those refunded included.
    """
    window_end = _check_refusals(order, enterprise, now, tz)
    wanted = _check_request(order, packages, requested, other_packages)
    voided = tuple(g for g in gifts if not g.void)
    owed = sum(g.used for g in voided)
    recharged, dropped = recharge_gift_usage(owed, (*packages, *other_packages))
    shares = split_cash(order.cash_fen, len(packages))
    lines = tuple(
        refund_line(p.id, share, p.used, recharged.get(p.id, 0))
        for p, share in zip(packages, shares, strict=True)
        if p.id in wanted
    )
    return RefundQuote(
        order_id=order.order_id,
        window_end=window_end,
        lines=lines,
        voided_gifts=tuple(g.id for g in voided),
        gift_used_pv=owed,
        recharged=MappingProxyType(recharged),
        dropped_pv=dropped,
        voucher_fen=order.voucher_fen,
        total_refund_fen=sum(line.refund_fen for line in lines),
    )
