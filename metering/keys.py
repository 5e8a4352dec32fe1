"""Every Redis key and stream name pvgate uses, built in one place.

All keys of one enterprise share the hash tag ``{<enterprise_id>}`` so that every
script touches a single cluster slot.

    pvgate:{E}:meta      hash   suspended ("1"/"0"), blocked (cached refusal reason)
    pvgate:{E}:live      zset   buckets that can still be debited, in deduction order
    pvgate:{E}:all       zset   every bucket ever credited, in deduction order
    pvgate:{E}:buckets   hash   "<bucket_id>|<field>" -> value, one set of fields a bucket
    pvgate:usage         stream usage entries appended by gateways, read by billing
    pvgate:{sites}:all   hash   site key (host + path prefix) -> site JSON
    pvgate:{sites}:version      counter, bumped on every site change
    pvgate:sites:changed        pub/sub channel: a site changed (payload: its key)
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Final, NamedTuple

from metering.errors import InvalidIdentifier

PREFIX: Final = "pvgate"
USAGE_STREAM: Final = f"{PREFIX}:usage"
SITES: Final = f"{PREFIX}:{{sites}}:all"
SITES_VERSION: Final = f"{PREFIX}:{{sites}}:version"
SITES_CHANNEL: Final = f"{PREFIX}:sites:changed"

_ENTERPRISE_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# "|" separates the bucket id from the field name inside the buckets hash.
_BUCKET_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")


class EnterpriseKeys(NamedTuple):
    """The keys of one enterprise, in the order every metering script takes them."""

    meta: str
    live: str
    all: str
    buckets: str


def validate_enterprise_id(enterprise_id: str) -> str:
    if not isinstance(enterprise_id, str) or not _ENTERPRISE_ID.fullmatch(enterprise_id):
        raise InvalidIdentifier(
            "enterprise_id", enterprise_id, "1-64 chars of A-Z a-z 0-9 _ . - (alnum first)"
        )
    return enterprise_id


def validate_bucket_id(bucket_id: str) -> str:
    if not isinstance(bucket_id, str) or not _BUCKET_ID.fullmatch(bucket_id):
        raise InvalidIdentifier(
            "bucket_id", bucket_id, "1-128 chars of A-Z a-z 0-9 _ . : - (alnum first)"
        )
    return bucket_id


@lru_cache(maxsize=65536)
def enterprise_keys(enterprise_id: str) -> EnterpriseKeys:
    """The keys of one enterprise; the id is validated before it becomes a key part.

    Cached: the hot path asks for the same enterprises again and again.
    """
    tag = f"{PREFIX}:{{{validate_enterprise_id(enterprise_id)}}}"
    return EnterpriseKeys(f"{tag}:meta", f"{tag}:live", f"{tag}:all", f"{tag}:buckets")
