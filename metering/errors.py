"""Errors raised by the metering core.

Redis exceptions never leave this package: they are translated at the edge
(`metering.scripts`, `metering.meter`) with ``raise ... from exc``.

    MeterError                  base of everything below
    ├── InvalidIdentifier       an enterprise or bucket id that cannot become a key part
    ├── InvalidSite             a site definition that cannot be served (host, origin…)
    ├── BucketConflict          a bucket id credited again with other terms
    ├── ScriptFailed            a Lua script answered with an error (bad arguments, bug)
    └── MeterUnavailable        Redis could not be reached or failed (connection, cluster)
        ├── MeterTimeout        Redis did not answer within the configured timeout
        └── MeterNotSent        refused before it was sent (Redis had just failed): the
                                debit certainly did not happen
"""

from __future__ import annotations


class MeterError(Exception):
    """Base class of every metering error."""


class InvalidIdentifier(MeterError, ValueError):
    """An enterprise or bucket id that is not allowed as part of a Redis key."""

    def __init__(self, field: str, value: object, rule: str) -> None:
        self.field = field
        self.value = value
        super().__init__(f"invalid {field} {value!r}: {rule}")


class InvalidSite(MeterError, ValueError):
    """A site that cannot be served; ``field`` names the part at fault, ``problem`` why."""

    def __init__(self, field: str, value: object, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field} {value!r}: {problem}")


class BucketConflict(MeterError):
    """A bucket id was credited again with different terms; the first credit stands."""

    def __init__(self, enterprise_id: str, bucket_id: str) -> None:
        self.enterprise_id = enterprise_id
        self.bucket_id = bucket_id
        super().__init__(
            f"bucket {bucket_id!r} of enterprise {enterprise_id!r} exists with other terms"
        )


class ScriptFailed(MeterError):
    """A metering script raised an error inside Redis."""


class MeterUnavailable(MeterError):
    """Redis is unreachable or failing; the debit's outcome is unknown to the caller."""


class MeterTimeout(MeterUnavailable):
    """Redis did not answer within the metering timeout."""


class MeterNotSent(MeterUnavailable):
    """The debit was never sent to Redis, so no PV was taken."""
