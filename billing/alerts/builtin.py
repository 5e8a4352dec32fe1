"""The built-in kinds of alert (docs/rules.md §4), on the ``balance`` source.

The ``balance`` source is one `BalanceStore.snapshot` per enterprise.  Its time is the later
of Redis's and the evaluator's clock (a test drives the latter), and *available* PV are
counted at that time, so a package that has just expired is out of them even before Redis
has been asked to debit it.

- ``low_balance``: available goes from ≥ threshold to < threshold (threshold 0: never);
- ``recovered``: back at or above the threshold — which re-arms ``low_balance``;
- ``exhausted``: available reaches 0, by usage or because the last live bucket expired;
- ``package_expiring``: a bucket with PV left expires within N days, for each N of the
  enterprise's ``expiry_reminder_days`` — one reminder per N, the nearest only when several
  fell due together (after downtime);
- ``package_expired``: a bucket expired with PV left, saying how many were cancelled.

A balance only *rises* in an evaluation caused by a top-up (`TOP_UPS`: payment, gift,
adjustment, settings): a PV given back after an origin failure must not re-arm an alert
that the next view would fire again.  An enterprise without any bucket is not evaluated.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from billing.alerts import metrics
from billing.alerts.kinds import (
    TOP_UPS,
    AlertKind,
    Context,
    Message,
    Observation,
    Registry,
    Source,
    SourceEnv,
)
from metering.buckets import Bucket, BucketStatus, Snapshot, from_ms, to_ms

BALANCE = "balance"
MAX_BUCKETS = 50  # in an event's detail, the soonest to expire first
STALE_EXPIRY = timedelta(days=7)  # an older expiry is recorded without an alert
_CONCURRENT_READS = 64


@dataclass(frozen=True, slots=True)
class BalanceFacts:
    snapshot: Snapshot
    now_ms: int  # max(Redis time, the evaluator's clock)

    @property
    def available(self) -> int:
        return sum(b.remaining for b in self.snapshot.buckets if b.is_live(self.now_ms))

    @property
    def at(self) -> datetime:
        return from_ms(self.now_ms)

    def detail(self) -> list[dict[str, Any]]:
        """The live buckets, soonest expiry first (at most `MAX_BUCKETS`)."""
        live = sorted(
            (b for b in self.snapshot.buckets if b.is_live(self.now_ms)),
            key=lambda b: (b.expires_at, b.id),
        )
        return [_bucket(b) for b in live[:MAX_BUCKETS]]


def _bucket(b: Bucket) -> dict[str, Any]:
    return {
        "id": b.id,
        "kind": b.kind.value,
        "granted_pv": b.granted,
        "used_pv": b.used,
        "remaining_pv": b.remaining,
        "expires_at": from_ms(b.expires_at).isoformat(),
    }


async def load_balances(
    env: SourceEnv, enterprise_ids: Sequence[str], now: datetime
) -> Mapping[str, BalanceFacts]:
    """One snapshot per enterprise, read concurrently (bounded)."""
    gate = asyncio.Semaphore(_CONCURRENT_READS)
    clock_ms = to_ms(now)

    async def read(enterprise_id: str) -> BalanceFacts:
        async with gate:
            snapshot = await env.store.snapshot(enterprise_id)
        return BalanceFacts(snapshot, max(snapshot.now, clock_ms))

    facts = await asyncio.gather(*(read(e) for e in enterprise_ids))
    for f in facts:  # the enterprises evaluated are those with alerts configured
        metrics.AVAILABLE_PV.labels(f.snapshot.enterprise_id).set(f.available)
    return {f.snapshot.enterprise_id: f for f in facts if f.snapshot.buckets}


def _level(ctx: Context, state: str, lower: str, extra: Mapping[str, Any]) -> list[Observation]:
    """One enterprise-wide observation; a rise (away from ``lower``) only on a top-up."""
    facts: BalanceFacts = ctx.fact(BALANCE)
    if state != lower and ctx.cause not in TOP_UPS:
        return []
    detail = {
        "threshold_pv": ctx.config.threshold_pv,
        "available_pv": facts.available,
        "buckets": facts.detail(),
        **extra,
    }
    return [Observation("", state, detail, facts.at)]


def observe_threshold(ctx: Context) -> list[Observation]:
    facts: BalanceFacts = ctx.fact(BALANCE)
    below = facts.available < ctx.config.threshold_pv
    return _level(ctx, "below" if below else "above", "below", {})


def observe_empty(ctx: Context) -> list[Observation]:
    facts: BalanceFacts = ctx.fact(BALANCE)
    return _level(ctx, "empty" if facts.available == 0 else "nonempty", "empty", {})


def _holding(facts: BalanceFacts) -> Iterable[Bucket]:
    """Active buckets that still hold PV (expired or not)."""
    return (
        b for b in facts.snapshot.buckets if b.status is BucketStatus.ACTIVE and b.remaining > 0
    )


def _stage(bucket: Bucket, now_ms: int, days: tuple[int, ...]) -> int | None:
    """The nearest reminder day that has fallen due for a bucket not yet expired."""
    left = bucket.expires_at - now_ms
    due = [d for d in days if left <= d * 86_400_000]
    return min(due) if due and left > 0 else None


def observe_expiring(ctx: Context) -> list[Observation]:
    facts: BalanceFacts = ctx.fact(BALANCE)
    found = []
    for b in _holding(facts):
        stage = _stage(b, facts.now_ms, ctx.config.expiry_reminder_days)
        if stage is not None:
            detail = {"bucket": _bucket(b), "days": stage, "available_pv": facts.available}
            found.append(Observation(b.id, f"d{stage}", detail, facts.at))
    return found


def expiring_fires(before: str, after: str) -> bool:
    """A nearer reminder than the last one sent (``d30`` → ``d7``), or the first."""
    if not after.startswith("d"):
        return False
    return before == "none" or int(after[1:]) < int(before[1:])


def due_expiring(ctx: Context) -> datetime | None:
    facts: BalanceFacts = ctx.fact(BALANCE)
    times = [
        b.expires_at - d * 86_400_000
        for b in _holding(facts)
        for d in ctx.config.expiry_reminder_days
    ]
    return _next(times, facts.now_ms)


def observe_expired(ctx: Context) -> list[Observation]:
    facts: BalanceFacts = ctx.fact(BALANCE)
    found = []
    for b in _holding(facts):
        if b.expires_at <= facts.now_ms:
            stale = facts.now_ms - b.expires_at > STALE_EXPIRY.total_seconds() * 1000
            detail = {
                "bucket": _bucket(b),
                "cancelled_pv": b.remaining,
                "expired_at": from_ms(b.expires_at).isoformat(),
                "available_pv": facts.available,
            }
            found.append(Observation(b.id, "stale" if stale else "expired", detail, facts.at))
    return found


def due_expired(ctx: Context) -> datetime | None:
    facts: BalanceFacts = ctx.fact(BALANCE)
    return _next([b.expires_at for b in _holding(facts)], facts.now_ms)


def _next(times_ms: Iterable[int], now_ms: int) -> datetime | None:
    future = [t for t in times_ms if t > now_ms]
    return from_ms(min(future)) if future else None


def _say_low(data: Mapping[str, Any]) -> Message:
    e, a, t = data["enterprise_id"], data["available_pv"], data["threshold_pv"]
    return Message(
        "余额不足",
        "Low balance",
        (f"企业 {e} 的可用 PV 为 {a}，低于阈值 {t}。",),
        (f"Enterprise {e} has {a} PV available, below its threshold of {t}.",),
    )


def _say_recovered(data: Mapping[str, Any]) -> Message:
    e, a, t = data["enterprise_id"], data["available_pv"], data["threshold_pv"]
    return Message(
        "余额已恢复",
        "Balance recovered",
        (f"企业 {e} 的可用 PV 为 {a}，已不低于阈值 {t}。",),
        (f"Enterprise {e} has {a} PV available again, at or above its threshold of {t}.",),
    )


def _say_exhausted(data: Mapping[str, Any]) -> Message:
    e = data["enterprise_id"]
    return Message(
        "余额已用尽",
        "Balance exhausted",
        (f"企业 {e} 已无可用 PV，页面将不再提供服务。",),
        (f"Enterprise {e} has no PV left: its pages are no longer served.",),
    )


def _say_expiring(data: Mapping[str, Any]) -> Message:
    b, d = data["bucket"], data["days"]
    return Message(
        "套餐即将到期",
        "Package expiring",
        (f"{b['id']} 剩余 {b['remaining_pv']} PV，将在 {d} 天内（{b['expires_at']}）到期。",),
        (f"{b['id']} holds {b['remaining_pv']} PV and expires within {d} days "
         f"({b['expires_at']}).",),
    )  # fmt: skip


def _say_expired(data: Mapping[str, Any]) -> Message:
    b, n = data["bucket"], data["cancelled_pv"]
    return Message(
        "套餐已到期",
        "Package expired",
        (f"{b['id']} 已于 {data['expired_at']} 到期，{n} PV 已作废。",),
        (f"{b['id']} expired at {data['expired_at']}; {n} PV were cancelled.",),
    )


def register_builtin(registry: Registry) -> Registry:
    """Add the ``balance`` source and the kinds of docs/rules.md §4 to ``registry``."""
    registry.add_source(Source(name=BALANCE, load=load_balances))
    for kind in (
        AlertKind(
            name="low_balance",
            source=BALANCE,
            initial="above",
            observe=observe_threshold,
            fires=lambda before, after: (before, after) == ("above", "below"),
            describe=_say_low,
        ),
        AlertKind(
            name="recovered",
            source=BALANCE,
            initial="above",
            observe=observe_threshold,
            fires=lambda before, after: (before, after) == ("below", "above"),
            describe=_say_recovered,
        ),
        AlertKind(
            name="exhausted",
            source=BALANCE,
            initial="nonempty",
            observe=observe_empty,
            fires=lambda before, after: (before, after) == ("nonempty", "empty"),
            describe=_say_exhausted,
        ),
        AlertKind(
            name="package_expiring",
            source=BALANCE,
            initial="none",
            observe=observe_expiring,
            fires=expiring_fires,
            describe=_say_expiring,
            due=due_expiring,
        ),
        AlertKind(
            name="package_expired",
            source=BALANCE,
            initial="live",
            observe=observe_expired,
            fires=lambda before, after: before != "expired" and after == "expired",
            describe=_say_expired,
            due=due_expired,
        ),
    ):
        registry.add_kind(kind)
    return registry
