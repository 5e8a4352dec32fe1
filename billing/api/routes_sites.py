"""Sites and their review (docs/rules.md §5): written to the ledger and the site registry."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Annotated, Literal

import sqlalchemy as sa
from pydantic import Field, StringConstraints

from billing import review
from billing.api import services
from billing.api.auth import enterprise_scope, require_ops
from billing.api.context import RequestContext
from billing.api.framework import Api, ApiModel, Id, Text
from billing.api.services import SETTINGS, SITE_REGISTRY
from billing.errors import Conflict, NotFound, ValidationFailed
from billing.rows import SiteDefinition, SiteRow
from billing.schema import sites
from metering.errors import InvalidSite
from metering.sites import Site, SiteStatus

api = Api()
Host = Annotated[Text, StringConstraints(min_length=1, max_length=253)]
Glob = Annotated[Text, StringConstraints(min_length=1, max_length=200)]


class SiteIn(ApiModel):
    enterprise_id: Id
    origin: Text = Field(min_length=1, max_length=500)
    path_prefix: Text = Field(default="", max_length=200)
    include: list[Glob] = Field(default_factory=list, max_length=50)
    exclude: list[Glob] = Field(default_factory=list, max_length=50)


class SiteOut(ApiModel):
    key: str
    host: str
    path_prefix: str
    enterprise_id: str
    origin: str
    status: Literal["pending", "approved", "rejected"]
    include: list[str]
    exclude: list[str]
    review_note: str
    updated_at: datetime


def _site(host: str, body: SiteIn, status: SiteStatus) -> Site:
    try:
        return Site(
            host=host.lower(),
            enterprise_id=body.enterprise_id,
            origin=body.origin,
            path_prefix=body.path_prefix,
            status=status,
            include=tuple(body.include),
            exclude=tuple(body.exclude),
        )
    except InvalidSite as exc:
        raise ValidationFailed(exc.field, exc.problem) from exc


def _out(row: SiteRow) -> SiteOut:
    d = row.definition
    return SiteOut(
        key=row.key,
        host=d.host,
        path_prefix=d.path_prefix,
        enterprise_id=row.enterprise_id,
        origin=d.origin,
        status=row.status,  # type: ignore[arg-type]  # the sites.status values
        include=list(d.include),
        exclude=list(d.exclude),
        review_note=row.review_note,
        updated_at=row.updated_at,
    )


async def _save(ctx: RequestContext, site: Site, note: str, before: SiteRow | None) -> SiteOut:
    row = SiteRow(
        key=site.key,
        enterprise_id=site.enterprise_id,
        definition=SiteDefinition(
            host=site.host,
            path_prefix=site.path_prefix,
            origin=site.origin,
            include=site.include,
            exclude=site.exclude,
        ),
        status=site.status.value,
        review_note=note,
        updated_at=datetime.now(UTC),
    )
    async with ctx.db.begin() as conn:
        await conn.execute(sa.delete(sites).where(sites.c.key == site.key))
        await conn.execute(sites.insert().values(**dataclasses.asdict(row)))
        await ctx.audit(
            conn, enterprise_id=site.enterprise_id, before=before, after=row, reason=note
        )
    await ctx.app[SITE_REGISTRY].put(site)  # every gateway sees it within a second
    return _out(row)


async def _existing(ctx: RequestContext, key: str) -> SiteRow | None:
    async with ctx.db.engine.connect() as conn:
        row = (
            await conn.execute(
                sa.select(sites).where(
                    sites.c.key == key, enterprise_scope(ctx.principal, sites.c.enterprise_id)
                )
            )
        ).first()
    return None if row is None else SiteRow.from_row(row)


@api.route(
    "PUT",
    "/v1/sites/{host}",
    summary="Create or change a site (pending review)",
    request_model=SiteIn,
    response_model=SiteOut,
    audit_action="site.put",
)
async def put_site(ctx: RequestContext, body: SiteIn, host: Host) -> SiteOut:
    """A new or changed site is pending; the automatic reviewer may reject it at once."""
    enterprise = await services.visible_enterprise(ctx, body.enterprise_id)
    site = _site(host, body, SiteStatus.PENDING)
    before = await _existing(ctx, site.key)
    if before is None:
        async with ctx.db.engine.connect() as conn:
            taken = await conn.scalar(sa.select(sites.c.key).where(sites.c.key == site.key))
        if taken:  # another tenant's site: the same answer as for any unseen object
            raise NotFound(f"site {site.key!r} not found")
    conf = ctx.app[SETTINGS].review
    verdict = await review.review(
        site, enterprise.industry, conf.deny_words, conf.fetch_timeout_s, conf.allow_addresses
    )
    if verdict.rejected:
        site = _site(host, body, SiteStatus.REJECTED)
    return await _save(ctx, site, verdict.note, before)


class SitesQuery(ApiModel):
    enterprise_id: Id | None = None
    status: Literal["pending", "approved", "rejected"] | None = None


class SiteList(ApiModel):
    items: list[SiteOut]


@api.route(
    "GET", "/v1/sites", summary="List sites", query_model=SitesQuery, response_model=SiteList
)
async def list_sites(ctx: RequestContext, body: None, query: SitesQuery) -> SiteList:
    conditions = [enterprise_scope(ctx.principal, sites.c.enterprise_id)]
    if query.enterprise_id:
        conditions.append(sites.c.enterprise_id == query.enterprise_id)
    if query.status:
        conditions.append(sites.c.status == query.status)
    async with ctx.db.engine.connect() as conn:
        rows = (
            (await conn.execute(sa.select(sites).where(*conditions).order_by(sites.c.key)))
            .mappings()
            .all()
        )
    return SiteList(items=[_out(SiteRow.from_row(r)) for r in rows])


class ReviewIn(ApiModel):
    decision: Literal["approve", "reject"]
    note: Text = Field(min_length=1, max_length=500)
    path_prefix: Text = Field(default="", max_length=200)


@api.route(
    "POST",
    "/v1/sites/{host}/review",
    summary="Approve or reject a site",
    request_model=ReviewIn,
    response_model=SiteOut,
    roles=("ops",),
    audit_action="site.review",
)
async def review_site(ctx: RequestContext, body: ReviewIn, host: Host) -> SiteOut:
    require_ops(ctx.principal)
    before = await _existing(ctx, host.lower() + body.path_prefix)
    if before is None:
        raise NotFound(f"site {host + body.path_prefix!r} not found")
    d = before.definition
    status = SiteStatus.APPROVED if body.decision == "approve" else SiteStatus.REJECTED
    try:
        site = Site(
            host=d.host,
            enterprise_id=before.enterprise_id,
            origin=d.origin,
            path_prefix=d.path_prefix,
            status=status,
            include=d.include,
            exclude=d.exclude,
        )
    except InvalidSite as exc:  # stored before a rule it breaks: it must be PUT again
        raise Conflict(f"site {before.key!r} is invalid ({exc}); PUT it again") from exc
    return await _save(ctx, site, body.note, before)
