"""Small builders shared by the metering tests."""

from __future__ import annotations

import time

from metering.buckets import BucketKind, BucketSpec

DAY_MS = 86_400_000
# Fixed at import: "far" expiries are a day away from it, so no test run crosses them.
T0 = int(time.time() * 1000)


def gift(
    bucket_id: str, granted: int, *, at: int = 0, expires: int = DAY_MS, order: str = ""
) -> BucketSpec:
    """A gift granted at T0+at (ms), expiring at T0+expires."""
    return BucketSpec(
        id=bucket_id,
        kind=BucketKind.GIFT,
        granted=granted,
        expires_at=T0 + expires,
        ordered_at=T0 + at,
        order_id=order,
    )


def package(
    bucket_id: str, granted: int, *, at: int = 0, expires: int = DAY_MS, order: str = ""
) -> BucketSpec:
    """A package paid at T0+at (ms), expiring at T0+expires."""
    return BucketSpec(
        id=bucket_id,
        kind=BucketKind.PACKAGE,
        granted=granted,
        expires_at=T0 + expires,
        ordered_at=T0 + at,
        order_id=order,
    )
