"""BalanceStore: every metering operation on one enterprise's buckets, one script each.

The gateway's hot path goes through `metering.meter.Meter` instead, which batches
debits; the store is for billing, ops and tests, one call per operation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis import exceptions as redis_errors

from metering import scripts
from metering.buckets import (
    Bucket,
    BucketKind,
    BucketSpec,
    BucketStatus,
    Debit,
    Refusal,
    Snapshot,
    VoidResult,
    priority,
)
from metering.errors import BucketConflict
from metering.keys import enterprise_keys, validate_bucket_id
from metering.replies import parse_debit, text
from metering.scripts import Arg, RedisClient, Script


def _pairs(flat: Sequence[Any]) -> dict[str, int]:
    return {text(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}


class BalanceStore:
    """Metering operations on Redis (single node or cluster), each one atomic script."""

    def __init__(self, client: RedisClient, *, timeout: float = 1.0) -> None:
        self._client = client
        self._timeout = timeout

    async def _run(self, script: Script, enterprise_id: str, args: Sequence[Arg]) -> Any:
        keys = enterprise_keys(enterprise_id)
        try:
            async with asyncio.timeout(self._timeout):
                return await scripts.call(self._client, script, keys, args)
        except (TimeoutError, redis_errors.RedisError, redis_errors.RedisClusterException) as exc:
            raise scripts.translate(exc, f"{script.name} {enterprise_id}") from exc

    async def ping(self) -> bool:
        """True if Redis answers a PING (every master of a cluster) within the timeout."""
        try:
            async with asyncio.timeout(self._timeout):
                return bool(await self._client.ping())
        except (TimeoutError, redis_errors.RedisError, redis_errors.RedisClusterException, OSError):
            return False

    async def credit(self, enterprise_id: str, spec: BucketSpec) -> bool:
        """Create a bucket. True if created; False if the same bucket existed already."""
        args = (
            spec.id,
            spec.kind.value,
            spec.granted,
            spec.expires_at,
            priority(spec.kind, spec.ordered_at),
            spec.order_id,
            spec.ordered_at,
        )
        created = int(await self._run(scripts.CREDIT_BUCKET, enterprise_id, args))
        if created < 0:
            raise BucketConflict(enterprise_id, spec.id)
        return created == 1

    async def debit(self, enterprise_id: str, n: int = 1) -> Debit:
        """Take up to n PV in deduction order."""
        return parse_debit(await self._run(scripts.DEBIT_PV, enterprise_id, (n,)))

    async def give_back(self, enterprise_id: str, bucket_id: str, k: int = 1) -> int:
        """Return up to k PV to an active bucket; the PV actually returned."""
        validate_bucket_id(bucket_id)
        return int(await self._run(scripts.GIVE_BACK_PV, enterprise_id, (bucket_id, k)))

    async def freeze(self, enterprise_id: str, bucket_ids: Sequence[str]) -> dict[str, int]:
        """Stop packages for a refund; each one's final used (-1: no such bucket)."""
        ids = [validate_bucket_id(b) for b in bucket_ids]
        reply = await self._run(scripts.FREEZE_BUCKETS, enterprise_id, ids)
        return dict(zip(ids, (int(u) for u in reply), strict=True))

    async def void_gifts(
        self, enterprise_id: str, gift_ids: Sequence[str], *, recharge: bool
    ) -> VoidResult:
        """Void gifts; with recharge, charge their used PV again to live packages."""
        ids = [validate_bucket_id(b) for b in gift_ids]
        gifts, charged, dropped = await self._run(
            scripts.VOID_GIFTS, enterprise_id, ["1" if recharge else "0", *ids]
        )
        return VoidResult(_pairs(gifts), _pairs(charged), int(dropped))

    async def snapshot(self, enterprise_id: str) -> Snapshot:
        now, suspended, available, reason, *rows = await self._run(
            scripts.READ_BALANCE, enterprise_id, ()
        )
        buckets = tuple(
            Bucket(
                id=text(r[0]),
                kind=BucketKind(text(r[1])),
                status=BucketStatus(text(r[2])),
                granted=int(r[3]),
                used=int(r[4]),
                expires_at=int(r[5]),
                ordered_at=int(r[6]),
                order_id=text(r[7]),
            )
            for r in rows
        )
        why = text(reason)
        return Snapshot(
            enterprise_id,
            int(now),
            bool(int(suspended)),
            int(available),
            Refusal(why) if why else None,
            buckets,
        )

    async def adjust(
        self, enterprise_id: str, bucket_id: str, delta: int, adjustment_id: str
    ) -> tuple[int, int]:
        """Change a bucket's granted PV by delta, once per adjustment id; (before, after)."""
        validate_bucket_id(bucket_id)
        validate_bucket_id(adjustment_id)  # the same charset: it becomes a field name
        before, after = await self._run(
            scripts.ADJUST_BUCKET, enterprise_id, (bucket_id, delta, adjustment_id)
        )
        return int(before), int(after)

    async def set_suspended(self, enterprise_id: str, suspended: bool) -> bool:
        """Suspend or resume; the previous state."""
        before = await self._run(scripts.SET_SUSPENDED, enterprise_id, ("1" if suspended else "0",))
        return bool(int(before))
