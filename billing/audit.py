"""The append-only audit log: every mutation writes one row in its own transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic_core import to_jsonable_python
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.schema import audit_log

_REASON_MAX = 500  # audit_log.reason


class Auditor(Protocol):
    """Writes an audit row for a change, inside the change's own transaction."""

    async def __call__(
        self,
        conn: AsyncConnection,
        action: str | None = None,
        enterprise_id: str | None = None,
        before: Any = None,
        after: Any = None,
        reason: str = "",
    ) -> None: ...


async def write_audit(
    conn: AsyncConnection,
    *,
    actor: str,
    action: str,
    enterprise_id: str | None,
    before: Any,
    after: Any,
    reason: str,
    request_id: str,
) -> None:
    if len(reason) > _REASON_MAX:
        reason = reason[: _REASON_MAX - 1] + "…"  # never lose the row over its length
    await conn.execute(
        audit_log.insert().values(
            at=datetime.now(UTC),
            actor=actor,
            action=action,
            enterprise_id=enterprise_id,
            before=None if before is None else to_jsonable_python(before),
            after=None if after is None else to_jsonable_python(after),
            reason=reason,
            request_id=request_id,
        )
    )


@dataclass(frozen=True, slots=True)
class SystemAuditor:
    """An `Auditor` for work not started by an API request (CLI, scheduler, demo)."""

    actor: str
    request_id: str = ""

    async def __call__(
        self,
        conn: AsyncConnection,
        action: str | None = None,
        enterprise_id: str | None = None,
        before: Any = None,
        after: Any = None,
        reason: str = "",
    ) -> None:
        await write_audit(
            conn,
            actor=self.actor,
            action=action or "system",
            enterprise_id=enterprise_id,
            before=before,
            after=after,
            reason=reason,
            request_id=self.request_id,
        )
