"""The admin app's typed state and the per-request context handed to every route handler.

The framework's own state is under the `web.AppKey`s here; an app built on it adds its own
keys (the business routes' are in `billing.api.services`) and handlers read them with
``ctx.app[KEY]``, typed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.api.auth import Principal, PrincipalCache
from billing.api.idempotency import IdempotencyStore
from billing.audit import write_audit
from billing.db import Database

BILLING_DB = web.AppKey("billing_db", Database)
PRINCIPALS = web.AppKey("principals", PrincipalCache)
IDEMPOTENCY = web.AppKey("idempotency", IdempotencyStore)


@dataclass(slots=True)
class RequestContext:
    """What a handler knows about its request besides the body and path parameters.

    ``db`` is the ledger; open transactions with ``async with ctx.db.begin() as conn`` and
    call `audit` inside the same transaction as the change it records.
    """

    principal: Principal
    request_id: str
    db: Database
    app: web.Application
    request: web.Request
    idempotency_key: str | None = None
    audit_action: str | None = None  # the route's default action
    audit_rows: int = field(default=0)

    async def audit(
        self,
        conn: AsyncConnection,
        action: str | None = None,
        enterprise_id: str | None = None,
        before: Any = None,
        after: Any = None,
        reason: str = "",
    ) -> None:
        """Append an ``audit_log`` row in ``conn``'s transaction: it commits with the change.

        ``action`` defaults to the route's ``audit_action``; ``before``/``after`` may be
        dicts, pydantic models or anything pydantic can turn into JSON.
        """
        action = action or self.audit_action
        if not action:
            raise ValueError("audit: no action given and the route declares no audit_action")
        await write_audit(
            conn,
            actor=self.principal.actor,
            action=action,
            enterprise_id=enterprise_id,
            before=before,
            after=after,
            reason=reason,
            request_id=self.request_id,
        )
        self.audit_rows += 1
