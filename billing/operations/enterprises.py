"""Enterprises: registration, then verification, flags and suspension by ops."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from billing.audit import Auditor
from billing.db import Database
from billing.errors import Conflict, ValidationFailed
from billing.ledger import get_enterprise
from billing.rows import EnterpriseRow
from billing.schema import enterprises
from metering import BalanceStore
from metering.keys import validate_enterprise_id

ENTERPRISE_FLAGS = ("verified", "flagged_abuse", "flagged_violation", "suspended")


@dataclass(frozen=True, slots=True, kw_only=True)
class NewEnterprise:
    """What registering an enterprise takes; the flags start cleared."""

    id: str
    id_type: str
    name: str
    industry: str
    verified: bool = False
    partner_id: str | None = None


async def register_enterprise(
    db: Database, audit: Auditor, new: NewEnterprise | Mapping[str, Any]
) -> EnterpriseRow:
    """A new enterprise (``new`` may also be a mapping of `NewEnterprise`'s fields)."""
    if not isinstance(new, NewEnterprise):
        new = NewEnterprise(**new)
    try:
        validate_enterprise_id(new.id)
    except ValueError as exc:
        raise ValidationFailed("id", str(exc)) from exc
    now = datetime.now(UTC)
    row = EnterpriseRow(
        **dataclasses.asdict(new),
        flagged_abuse=False,
        flagged_violation=False,
        suspended=False,
        created_at=now,
        updated_at=now,
    )
    async with db.begin() as conn:
        exists = await conn.scalar(sa.select(enterprises.c.id).where(enterprises.c.id == new.id))
        if exists:
            raise Conflict(f"enterprise {new.id!r} exists already")
        await conn.execute(enterprises.insert().values(**dataclasses.asdict(row)))
        await audit(conn, "enterprise.register", new.id, None, row)
    return row


async def update_enterprise(
    db: Database,
    store: BalanceStore,
    audit: Auditor,
    enterprise_id: str,
    changes: Mapping[str, bool],
    reason: str,
) -> EnterpriseRow:
    """Verify, flag (abuse / agreement violation) or suspend; suspension blocks the pages."""
    unknown = sorted(set(changes) - set(ENTERPRISE_FLAGS))
    if unknown:
        raise ValidationFailed(unknown[0], f"not one of {', '.join(ENTERPRISE_FLAGS)}")
    async with db.begin() as conn:
        before = await get_enterprise(conn, enterprise_id)
        after = dataclasses.replace(
            before,
            verified=changes.get("verified", before.verified),
            flagged_abuse=changes.get("flagged_abuse", before.flagged_abuse),
            flagged_violation=changes.get("flagged_violation", before.flagged_violation),
            suspended=changes.get("suspended", before.suspended),
            updated_at=datetime.now(UTC),
        )
        await conn.execute(
            enterprises.update()
            .where(enterprises.c.id == enterprise_id)
            .values(**changes, updated_at=after.updated_at)
        )
        await audit(conn, "enterprise.update", enterprise_id, before, after, reason)
    if "suspended" in changes:
        await store.set_suspended(enterprise_id, changes["suspended"])
    return after
