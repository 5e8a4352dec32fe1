"""pvgate metering core: prepaid PV balances in Redis, debited atomically per page view.

Everything here is independent of the gateway and billing packages; both import it.
"""

# First: it chooses the compiled modules or their sources, before any of them is imported.
import metering.build  # noqa: F401

# isort: split

from metering.buckets import Bucket, BucketKind, BucketStatus, Snapshot
from metering.errors import (
    BucketConflict,
    InvalidIdentifier,
    MeterError,
    MeterNotSent,
    MeterTimeout,
    MeterUnavailable,
    ScriptFailed,
)
from metering.meter import DebitResult, Meter
from metering.store import BalanceStore

__all__ = [
    "BalanceStore",
    "Bucket",
    "BucketConflict",
    "BucketKind",
    "BucketStatus",
    "DebitResult",
    "InvalidIdentifier",
    "Meter",
    "MeterError",
    "MeterNotSent",
    "MeterTimeout",
    "MeterUnavailable",
    "ScriptFailed",
    "Snapshot",
]
