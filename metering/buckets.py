"""Value objects of the metering core: buckets, debits, refusals and snapshots.

Times are integer milliseconds since the epoch here, as they are in Redis.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from metering.keys import validate_bucket_id

# Packages sort after every gift: their score is offset by 2**52, still exact in a double.
PACKAGE_OFFSET = 2**52
_MAX_MS = 2**52 - 1


class BucketKind(StrEnum):
    GIFT = "gift"
    PACKAGE = "package"


class BucketStatus(StrEnum):
    ACTIVE = "active"
    VOID = "void"
    REFUNDED = "refunded"


class Refusal(StrEnum):
    """Why a PV was not granted."""

    EXHAUSTED = "exhausted"
    EXPIRED = "expired"
    NO_BALANCE = "no_balance"
    SUSPENDED = "suspended"


def to_ms(moment: datetime) -> int:
    """A timezone-aware datetime as integer epoch milliseconds."""
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: metering times must be timezone-aware")
    return int(moment.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def priority(kind: BucketKind, ordered_at: int) -> int:
    """Deduction order as a sorted-set score: gifts before packages, then oldest first."""
    return ordered_at + (PACKAGE_OFFSET if kind is BucketKind.PACKAGE else 0)


@dataclass(frozen=True, slots=True, kw_only=True)
class BucketSpec:
    """The terms a bucket is credited with; a retried credit must repeat them exactly."""

    id: str
    kind: BucketKind
    granted: int
    expires_at: int
    ordered_at: int
    order_id: str = ""

    def __post_init__(self) -> None:
        validate_bucket_id(self.id)
        if self.granted < 1:
            raise ValueError(f"bucket {self.id}: granted must be >= 1, got {self.granted}")
        for name in ("expires_at", "ordered_at"):
            value = getattr(self, name)
            if not 0 <= value <= _MAX_MS:
                raise ValueError(f"bucket {self.id}: {name} out of range: {value}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Bucket:
    id: str
    kind: BucketKind
    status: BucketStatus
    granted: int
    used: int
    expires_at: int
    ordered_at: int
    order_id: str

    @property
    def remaining(self) -> int:
        return self.granted - self.used

    def is_live(self, now: int) -> bool:
        return (
            self.status is BucketStatus.ACTIVE
            and self.used < self.granted
            and now < self.expires_at
        )


@dataclass(frozen=True, slots=True)
class Debit:
    """The outcome of one debit of n PV: what was taken from which bucket, and why not more."""

    granted: int
    reason: Refusal | None
    now: int
    takes: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Snapshot:
    enterprise_id: str
    now: int
    suspended: bool
    available: int
    reason: Refusal | None
    buckets: tuple[Bucket, ...]


@dataclass(frozen=True, slots=True)
class VoidResult:
    """Gifts voided (each with the PV it had given) and the PV charged again to packages."""

    gifts_used: dict[str, int]
    recharged: dict[str, int]
    dropped: int
