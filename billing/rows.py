"""The ledger's rows as frozen value objects, for what crosses a module boundary.

Each class holds one row of a `billing.schema` table, column for column (a test keeps them
in step), and is built from a SQLAlchemy row or mapping with ``from_row``; queries stay in
SQLAlchemy Core.  ``dataclasses.asdict(row)`` gives the values to insert.  An audit row
takes them as they are (pydantic turns a dataclass into JSON, as it did the dicts), and
the API's response models read them with ``model_validate(row, from_attributes=True)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Self

import sqlalchemy as sa

RowLike = sa.Row[Any] | sa.RowMapping | Mapping[str, Any]


def _mapping(row: RowLike) -> Mapping[Any, Any]:
    return row._mapping if isinstance(row, sa.Row) else row


class LedgerRow:
    """Base of the row classes: ``from_row`` reads the columns named by the fields."""

    __slots__ = ()
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    @classmethod
    def from_row(cls, row: RowLike) -> Self:
        """The row's columns by field name; other columns (a join's) are ignored."""
        mapping = _mapping(row)
        return cls(**{name: mapping[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True, slots=True, kw_only=True)
class EnterpriseRow(LedgerRow):
    id: str
    id_type: str
    name: str
    industry: str
    verified: bool
    partner_id: str | None
    flagged_abuse: bool
    flagged_violation: bool
    suspended: bool
    created_at: datetime
    updated_at: datetime

    @property
    def flagged(self) -> bool:
        """Flagged by ops for suspected abuse or a breach of the agreement (no refunds)."""
        return self.flagged_abuse or self.flagged_violation


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderRow(LedgerRow):
    id: str
    enterprise_id: str
    kind: str  # pv | interop
    sku: str
    quantity: int
    amount_fen: int
    voucher_fen: int
    created_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderLineRow(LedgerRow):
    order_id: str
    position: int
    item: str
    description: str
    quantity: int
    unit_price_fen: int
    amount_fen: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PaymentRow(LedgerRow):
    id: str
    order_id: str
    cash_fen: int
    reference: str
    paid_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class PackageRow(LedgerRow):
    id: str  # the Redis bucket id
    order_id: str
    enterprise_id: str
    position: int
    granted_pv: int
    paid_cash_fen: int
    paid_at: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class GiftRow(LedgerRow):
    id: str  # the Redis bucket id
    enterprise_id: str
    order_id: str | None
    granted_pv: int
    reason: str
    granted_at: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class AdjustmentRow(LedgerRow):
    id: str
    enterprise_id: str
    bucket_id: str
    delta_pv: int
    reason: str
    actor: str
    created_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class RefundRequestRow(LedgerRow):
    """A refund accepted under an idempotency key (step 1 of `billing.refunding`)."""

    id: str
    idempotency_key: str
    order_id: str
    enterprise_id: str
    package_ids: tuple[str, ...]
    # The gifts this refund voids; None for a request accepted before migration 0004 (all).
    voided_gifts: tuple[str, ...] | None
    actor: str
    created_at: datetime

    @classmethod
    def from_row(cls, row: RowLike) -> Self:
        mapping = _mapping(row)
        voided = mapping["voided_gifts"]
        return cls(
            id=mapping["id"],
            idempotency_key=mapping["idempotency_key"],
            order_id=mapping["order_id"],
            enterprise_id=mapping["enterprise_id"],
            package_ids=tuple(mapping["package_ids"]),
            voided_gifts=None if voided is None else tuple(voided),
            actor=mapping["actor"],
            created_at=mapping["created_at"],
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RefundLineRow(LedgerRow):
    """A package's line of a booked refund (`billing.rules.refunds.RefundLine`, as stored)."""

    refund_id: str
    package_id: str
    paid_cash_fen: int
    used_before: int
    recharged_pv: int
    used_after: int
    refund_fen: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteDefinition:
    """``sites.definition``: what `metering.sites.Site` is built from, besides its status."""

    host: str
    path_prefix: str
    origin: str
    include: tuple[str, ...]
    exclude: tuple[str, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SiteDefinition:
        return cls(
            host=data["host"],
            path_prefix=data["path_prefix"],
            origin=data["origin"],
            include=tuple(data["include"]),
            exclude=tuple(data["exclude"]),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteRow(LedgerRow):
    key: str  # host + path prefix
    enterprise_id: str
    definition: SiteDefinition
    status: str
    review_note: str
    updated_at: datetime

    @classmethod
    def from_row(cls, row: RowLike) -> Self:
        mapping = _mapping(row)
        return cls(
            key=mapping["key"],
            enterprise_id=mapping["enterprise_id"],
            definition=SiteDefinition.from_json(mapping["definition"]),
            status=mapping["status"],
            review_note=mapping["review_note"],
            updated_at=mapping["updated_at"],
        )
