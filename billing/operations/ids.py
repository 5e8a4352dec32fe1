"""Ids of the ledger's rows: random ones, and stable ones derived from an idempotency key."""

from __future__ import annotations

import hashlib
import uuid


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def id_from_key(prefix: str, scope: str, key: str) -> str:
    """A stable id for what one idempotency key creates (same key, same object)."""
    digest = hashlib.sha256(f"{scope}\0{key}".encode()).hexdigest()[:20]
    return f"{prefix}_{digest}"
