"""``GET /v1/audit``: the append-only audit log, newest first, within the caller's scope.

ops see every row; a partner the rows of its enterprises; a merchant those of its own
enterprise.  Rows about no enterprise (token and system actions) are for ops only.
Asking for an enterprise outside the scope answers 404, as for any other tenant's object.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic import Field, model_validator

from billing.api.auth import enterprise_scope, fetch_visible_enterprise
from billing.api.context import RequestContext
from billing.api.framework import Api, ApiModel, Id, ParamInt, QueryTime
from billing.schema import audit_log

api = Api()


class AuditQuery(ApiModel):
    enterprise_id: Id | None = Field(default=None, description="only rows about this enterprise")
    since: QueryTime | None = Field(
        default=None, description="ISO 8601, inclusive; without an offset it is UTC"
    )
    until: QueryTime | None = Field(
        default=None, description="ISO 8601, exclusive; without an offset it is UTC"
    )
    limit: ParamInt = Field(default=100, ge=1, le=1000)

    @model_validator(mode="after")
    def _ordered(self) -> AuditQuery:
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValueError("since must be before until")
        return self


class AuditEntry(ApiModel):
    id: int
    at: datetime
    actor: str = Field(description="<token id>:<role>")
    action: str
    enterprise_id: str | None
    before: Any
    after: Any
    reason: str
    request_id: str


class AuditPage(ApiModel):
    items: list[AuditEntry]


@api.route(
    "GET",
    "/v1/audit",
    summary="Read the audit log",
    query_model=AuditQuery,
    response_model=AuditPage,
)
async def list_audit(ctx: RequestContext, body: None, query: AuditQuery) -> AuditPage:
    """Audit rows newest first, filtered by enterprise and time, within the token's scope."""
    conditions: list[sa.ColumnElement[bool]] = [
        enterprise_scope(ctx.principal, audit_log.c.enterprise_id)
    ]
    if query.enterprise_id is not None:
        conditions.append(audit_log.c.enterprise_id == query.enterprise_id)
    if query.since is not None:
        conditions.append(audit_log.c.at >= query.since)
    if query.until is not None:
        conditions.append(audit_log.c.at < query.until)
    statement = (
        sa.select(audit_log)
        .where(*conditions)
        .order_by(audit_log.c.at.desc(), audit_log.c.id.desc())
        .limit(query.limit)
    )
    async with ctx.db.engine.connect() as conn:
        if query.enterprise_id is not None and ctx.principal.kind != "ops":
            await fetch_visible_enterprise(conn, ctx.principal, query.enterprise_id)
        rows = (await conn.execute(statement)).mappings().all()
    return AuditPage(items=[AuditEntry.model_validate(dict(row)) for row in rows])
