"""WeCom callback settings and the events received, over the admin API.

PUT /v1/enterprises/{id}/wecom          token, EncodingAESKey, corp id, relay target
GET /v1/enterprises/{id}/wecom          the same, secrets masked, and the callback path
GET /v1/enterprises/{id}/wecom/events   events received: relayed, dropped, duplicates
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StrictBool, StringConstraints

from billing.api import services
from billing.api.context import RequestContext
from billing.api.fields import CorpId, ParamInt
from billing.api.framework import Api, ApiModel, Id, QueryTime, Text
from billing.api.services import ALERTS
from billing.errors import NotFound, ValidationFailed
from billing.interop.records import WeComEventRow, WeComSettingsRow
from billing.interop.runtime import INTEROP
from billing.outbound import OutboundRefused
from billing.wecom import callback
from billing.wecom.config import MaskedSettings, put_settings, read_settings
from billing.wecom.events import list_events

api = Api()

Token = Annotated[str, StringConstraints(min_length=3, max_length=32, pattern=r"^[A-Za-z0-9]+$")]
AesKey = Annotated[
    str, StringConstraints(min_length=43, max_length=43, pattern=r"^[A-Za-z0-9]{43}$")
]


class WeComIn(ApiModel):
    token: Token = Field(description="the callback Token configured in WeCom")
    encoding_aes_key: AesKey = Field(description="the callback EncodingAESKey (43 characters)")
    corp_id: CorpId = Field(description="the enterprise's corp id (ww… / wx…)")
    relay_url: Text = Field(
        min_length=8, max_length=2048, description="the customer's endpoint events go to"
    )
    rotate_relay_secret: StrictBool = Field(
        default=False, description="make a new secret for the relay's signatures"
    )


class WeComOut(ApiModel):
    enterprise_id: str
    token: str = Field(description="masked")
    encoding_aes_key: str = Field(description="masked")
    corp_id: str
    relay_url: str
    relay_secret: str = Field(
        description="signs the relay (Standard Webhooks): in full only in the answer that "
        "made it, masked after"
    )
    callback_path: str = Field(description="where WeCom must call, on the admin port")
    updated_at: datetime


def _out(row: WeComSettingsRow, shown_secret: str | None = None) -> WeComOut:
    masked = MaskedSettings.of(row)
    return WeComOut(
        enterprise_id=masked.enterprise_id,
        token=masked.token,
        encoding_aes_key=masked.encoding_aes_key,
        corp_id=masked.corp_id,
        relay_url=masked.relay_url,
        relay_secret=shown_secret or masked.relay_secret,
        callback_path=callback.PATH.format(enterprise_id=row.enterprise_id),
        updated_at=masked.updated_at,
    )


@api.route(
    "PUT",
    "/v1/enterprises/{enterprise_id}/wecom",
    summary="Set the WeCom callback's token, EncodingAESKey, corp id and relay target",
    request_model=WeComIn,
    response_model=WeComOut,
    audit_action="wecom.settings_update",
)
async def put_wecom(ctx: RequestContext, body: WeComIn, enterprise_id: Id) -> WeComOut:
    """The relay target must be a URL alert deliveries may call (https, a public address
    unless ``[alerts]`` allows otherwise).  Secrets are masked in the answer, except the
    relay's signing secret when this PUT made it (the first, or ``rotate_relay_secret``)."""
    await services.visible_enterprise(ctx, enterprise_id)
    try:
        ctx.app[ALERTS].policy.check_url(body.relay_url)
    except (OutboundRefused, ValueError) as exc:
        raise ValidationFailed("relay_url", str(exc)) from None
    row = WeComSettingsRow(
        enterprise_id=enterprise_id,
        token=body.token,
        encoding_aes_key=body.encoding_aes_key,
        corp_id=body.corp_id,
        relay_url=body.relay_url,
        relay_secret="",
        updated_at=ctx.app[INTEROP].clock.now(),
    )
    stored, made = await put_settings(ctx.db, ctx.audit, row, rotate=body.rotate_relay_secret)
    return _out(stored, made)


@api.route(
    "GET",
    "/v1/enterprises/{enterprise_id}/wecom",
    summary="The WeCom callback settings, secrets masked",
    response_model=WeComOut,
)
async def get_wecom(ctx: RequestContext, body: None, enterprise_id: Id) -> WeComOut:
    await services.visible_enterprise(ctx, enterprise_id)
    async with ctx.db.engine.connect() as conn:
        row = await read_settings(conn, enterprise_id)
    if row is None:
        raise NotFound(f"enterprise {enterprise_id!r} has no WeCom settings")
    return _out(row)


class EventsQuery(ApiModel):
    result: Literal["relayed", "dropped_inactive", "duplicate"] | None = None
    since: QueryTime | None = None
    until: QueryTime | None = None
    limit: ParamInt = Field(default=100, ge=1, le=1000)


class EventOut(ApiModel):
    id: str
    received_at: datetime
    msg_key: str
    msg_type: str
    event: str
    change_type: str
    userid: str | None
    result: str = Field(description="relayed, dropped_inactive (never replayed) or duplicate")
    message: str = Field(description="the decrypted XML")


class EventsOut(ApiModel):
    enterprise_id: str
    items: list[EventOut]


def _event(row: WeComEventRow) -> EventOut:
    return EventOut.model_validate(row, from_attributes=True)


@api.route(
    "GET",
    "/v1/enterprises/{enterprise_id}/wecom/events",
    summary="WeCom events received, newest first",
    query_model=EventsQuery,
    response_model=EventsOut,
)
async def list_wecom_events(
    ctx: RequestContext, body: None, enterprise_id: Id, query: EventsQuery
) -> EventsOut:
    """Every authenticated callback with what became of it.  A dropped event was
    acknowledged to WeCom and is never relayed later, whatever is bought since."""
    await services.visible_enterprise(ctx, enterprise_id)
    if query.since and query.until and query.since >= query.until:
        raise ValidationFailed("since", "must be before until")
    async with ctx.db.engine.connect() as conn:
        rows = await list_events(
            conn,
            enterprise_id,
            result=query.result,
            since=query.since,
            until=query.until,
            limit=query.limit,
        )
    return EventsOut(enterprise_id=enterprise_id, items=[_event(r) for r in rows])
