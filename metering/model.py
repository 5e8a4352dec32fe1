"""A pure-Python reference model of docs/rules.md §3 (deduction order) and of every metering script.

No I/O and no clock: each operation is told ``now`` (ms).  The tests run it side by side
with the Lua scripts and demand the same answers; it is deliberately written the plain
way (sort every time, scan every bucket) so that it is easy to trust.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from metering.buckets import (
    Bucket,
    BucketSpec,
    BucketStatus,
    Debit,
    Refusal,
    VoidResult,
    priority,
)
from metering.buckets import BucketKind as Kind


@dataclass
class _Entry:
    spec: BucketSpec
    used: int = 0
    status: BucketStatus = BucketStatus.ACTIVE
    # What voiding this gift charged to which package, and what found no room.
    recharged: dict[str, int] = field(default_factory=dict)
    dropped: int = 0
    granted: int = 0  # as adjusted; spec.granted stays what was credited
    adjustments: dict[str, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.granted = self.granted or self.spec.granted

    def bucket(self) -> Bucket:
        s = self.spec
        return Bucket(
            id=s.id,
            kind=s.kind,
            status=self.status,
            granted=self.granted,
            used=self.used,
            expires_at=s.expires_at,
            ordered_at=s.ordered_at,
            order_id=s.order_id,
        )

    def live(self, now: int) -> bool:
        return self.bucket().is_live(now)


class BalanceModel:
    """One enterprise's buckets, as the scripts are specified to treat them."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self.suspended = False

    def _ordered(self) -> list[_Entry]:
        # Redis breaks score ties by member, byte-wise; ids are ASCII, so str order matches.
        return sorted(
            self._entries.values(),
            key=lambda e: (priority(e.spec.kind, e.spec.ordered_at), e.spec.id),
        )

    def buckets(self) -> list[Bucket]:
        return [e.bucket() for e in self._ordered()]

    def credit(self, spec: BucketSpec) -> int:
        """1 created, 0 the same bucket existed, -1 the id exists with other terms."""
        existing = self._entries.get(spec.id)
        if existing is None:
            self._entries[spec.id] = _Entry(spec)
            return 1
        return 0 if existing.spec == spec else -1

    def reason(self, now: int) -> Refusal | None:
        """What a debit would answer now if it were refused, or None if it would be granted."""
        if self.suspended:
            return Refusal.SUSPENDED
        if any(e.live(now) for e in self._entries.values()):
            return None
        reason = Refusal.NO_BALANCE
        for e in self._ordered():
            if e.status is BucketStatus.ACTIVE:
                if e.used < e.granted and now >= e.spec.expires_at:
                    return Refusal.EXPIRED
                reason = Refusal.EXHAUSTED
        return reason

    def available(self, now: int) -> int:
        return sum(e.granted - e.used for e in self._entries.values() if e.live(now))

    def debit(self, n: int, now: int) -> Debit:
        if n < 1:
            raise ValueError("n must be positive")
        if self.suspended:
            return Debit(0, Refusal.SUSPENDED, now, ())
        left = n
        takes: list[tuple[str, int]] = []
        for e in self._ordered():
            if left == 0:
                break
            if e.live(now):
                take = min(left, e.granted - e.used)
                e.used += take
                left -= take
                takes.append((e.spec.id, take))
        return Debit(n - left, self.reason(now) if left else None, now, tuple(takes))

    def give_back(self, bucket_id: str, k: int) -> int:
        e = self._entries.get(bucket_id)
        if e is None or e.status is not BucketStatus.ACTIVE:
            return 0
        back = min(k, e.used)
        e.used -= back
        return back

    def freeze(self, bucket_ids: list[str]) -> dict[str, int]:
        for bucket_id in bucket_ids:
            e = self._entries.get(bucket_id)
            if e is not None and e.spec.kind is not Kind.PACKAGE:
                raise ValueError(f"freeze: bucket {bucket_id} is a {e.spec.kind}, not a package")
        out: dict[str, int] = {}
        for bucket_id in bucket_ids:
            e = self._entries.get(bucket_id)
            if e is None:
                out[bucket_id] = -1
                continue
            if e.status is BucketStatus.ACTIVE:
                e.status = BucketStatus.REFUNDED
            out[bucket_id] = e.used
        return out

    def void_gifts(self, gift_ids: list[str], *, recharge: bool, now: int) -> VoidResult:
        for gift_id in gift_ids:
            e = self._entries.get(gift_id)
            if e is not None and e.spec.kind is not Kind.GIFT:
                raise ValueError(f"void: bucket {gift_id} is a {e.spec.kind}, not a gift")
        gifts: dict[str, int] = {}
        charged: dict[str, int] = {}
        dropped = 0
        for gift_id in gift_ids:
            e = self._entries.get(gift_id)
            if e is None:
                continue
            if e.status is BucketStatus.ACTIVE:
                e.status = BucketStatus.VOID
                e.recharged, e.dropped = self._recharge(e.used, now) if recharge else ({}, 0)
            gifts[gift_id] = e.used
            for package_id, n in e.recharged.items():
                charged[package_id] = charged.get(package_id, 0) + n
            dropped += e.dropped
        return VoidResult(gifts, charged, dropped)

    def _recharge(self, owed: int, now: int) -> tuple[dict[str, int], int]:
        charged: dict[str, int] = {}
        for e in self._ordered():
            if owed == 0:
                break
            if e.spec.kind is Kind.PACKAGE and e.live(now):
                take = min(owed, e.granted - e.used)
                e.used += take
                owed -= take
                charged[e.spec.id] = take
        return charged, owed

    def adjust(self, bucket_id: str, delta: int, adjustment_id: str) -> tuple[int, int]:
        if delta == 0:
            raise ValueError("adjust: delta must not be 0")
        e = self._entries.get(bucket_id)
        if e is not None and adjustment_id in e.adjustments:
            return e.adjustments[adjustment_id]
        if e is None or e.status is not BucketStatus.ACTIVE:
            raise ValueError(f"adjust: bucket {bucket_id} cannot be adjusted")
        after = e.granted + delta
        if after < max(e.used, 1):
            raise ValueError("adjust: granted would fall below used")
        before, e.granted = e.granted, after
        e.adjustments[adjustment_id] = (before, after)
        return before, after

    def recharged_by(self, gift_id: str) -> int:
        """The PV that voiding this gift charged to packages (0 if none, or not void)."""
        e = self._entries.get(gift_id)
        return sum(e.recharged.values()) if e is not None else 0

    def set_suspended(self, suspended: bool) -> bool:
        before, self.suspended = self.suspended, suspended
        return before

    def copy(self) -> BalanceModel:
        other = BalanceModel()
        other._entries = {
            k: replace(v, recharged=dict(v.recharged), adjustments=dict(v.adjustments))
            for k, v in self._entries.items()
        }
        other.suspended = self.suspended
        return other
