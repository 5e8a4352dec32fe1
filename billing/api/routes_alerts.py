"""Alert settings, channels, history, test messages and retries (docs/rules.md §4).

ops, the enterprise's partner and the merchant itself read and change an enterprise's
alerts (404 for anyone else); only ops retry a delivery.  Secrets are shown in full once —
a webhook's signing secret in the answer that created or rotated it — and masked after.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import Field, StrictBool, StrictInt, StringConstraints, field_validator

from billing.alerts import config, history
from billing.alerts.history import DeliveryHistory, EventHistory
from billing.alerts.kinds import SETTINGS as SETTINGS_CHANGED
from billing.api import services
from billing.api.context import RequestContext
from billing.api.fields import CorpId, WeComUserId
from billing.api.framework import Api, ApiModel, Id, ParamInt, QueryTime, Text
from billing.api.services import ALERTS, SETTINGS
from billing.errors import BillingError, ValidationFailed

api = Api()

RobotKey = Annotated[
    str,
    StringConstraints(
        pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    ),
]
AppSecret = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,128}$")]
KindName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
Day = Annotated[StrictInt, Field(ge=1, le=366)]


class WebhookIn(ApiModel):
    type: Literal["webhook"]
    id: Id | None = Field(default=None, description="an existing channel's id; omit for a new one")
    enabled: StrictBool = True
    url: Text = Field(min_length=1, max_length=2000, description="https (http if allowed)")


class RobotIn(ApiModel):
    type: Literal["wecom_robot"]
    id: Id | None = None
    enabled: StrictBool = True
    key: RobotKey | None = Field(
        default=None, description="the group robot's webhook key; omit to keep the stored one"
    )


class AppIn(ApiModel):
    type: Literal["wecom_app"]
    id: Id | None = None
    enabled: StrictBool = True
    corp_id: CorpId
    agent_id: StrictInt = Field(ge=1, le=2**31 - 1)
    secret: AppSecret | None = Field(default=None, description="omit to keep the stored one")
    to_users: list[WeComUserId] = Field(min_length=1, max_length=1000)

    @field_validator("to_users")
    @classmethod
    def _distinct(cls, users: list[str]) -> list[str]:
        if len(set(users)) != len(users):
            raise ValueError("a user is listed twice")
        return users


ChannelIn = Annotated[WebhookIn | RobotIn | AppIn, Field(discriminator="type")]


class AlertsIn(ApiModel):
    threshold_pv: StrictInt = Field(ge=0, le=10**12, description="0: no low-balance alert")
    expiry_reminder_days: list[Day] = Field(default=[30, 7, 1], max_length=10)
    channels: list[ChannelIn] = Field(default_factory=list, max_length=10)

    @field_validator("expiry_reminder_days")
    @classmethod
    def _distinct_days(cls, days: list[int]) -> list[int]:
        if len(set(days)) != len(days):
            raise ValueError("a day is listed twice")
        return sorted(days, reverse=True)


class ChannelOut(ApiModel):
    id: str
    type: str
    enabled: bool
    disabled_reason: str | None = None
    url: str | None = None
    key: str | None = Field(default=None, description="masked")
    corp_id: str | None = None
    agent_id: int | None = None
    to_users: list[str] | None = None
    secret: str | None = Field(default=None, description="masked")
    signing_secret: str | None = Field(
        default=None, description="whsec_…: in full only in the answer that created it"
    )
    previous_secret_until: datetime | None = None


class AlertsOut(ApiModel):
    enterprise_id: str
    configured: bool
    threshold_pv: int
    expiry_reminder_days: list[int]
    channels: list[ChannelOut]


def _out(
    enterprise_id: str, view: dict[str, Any], configured: bool, shown: dict[str, str]
) -> AlertsOut:
    channels = []
    for channel in view["channels"]:
        if channel["id"] in shown:
            channel = {**channel, "signing_secret": shown[channel["id"]]}
        channels.append(ChannelOut.model_validate(channel))
    return AlertsOut(
        enterprise_id=enterprise_id,
        configured=configured,
        threshold_pv=view["threshold_pv"],
        expiry_reminder_days=view["expiry_reminder_days"],
        channels=channels,
    )


@api.route(
    "GET",
    "/v1/enterprises/{enterprise_id}/alerts",
    summary="Read alert settings and channels",
    response_model=AlertsOut,
)
async def get_alerts(ctx: RequestContext, body: None, enterprise_id: Id) -> AlertsOut:
    await services.visible_enterprise(ctx, enterprise_id)
    async with ctx.db.engine.connect() as conn:
        settings, channels = await config.read(conn, enterprise_id)
    return _out(enterprise_id, config.settings_view(settings, channels), settings is not None, {})


@contextlib.contextmanager
def _in_body() -> Iterator[None]:
    """A field the alerts code names (``channels.0.url``) as the API names it (``body.…``)."""
    try:
        yield
    except ValidationFailed as exc:
        problem = exc.message.removeprefix(f"{exc.field}: ")
        raise ValidationFailed(f"body.{exc.field}", problem) from None


def _spec(body: AlertsIn) -> config.SettingsSpec:
    channels = []
    for c in body.channels:
        if isinstance(c, WebhookIn):
            fields: dict[str, Any] = {"url": c.url}
            secret = None
        elif isinstance(c, RobotIn):
            fields, secret = {}, c.key
        else:
            fields = {"corp_id": c.corp_id, "agent_id": c.agent_id, "to_users": c.to_users}
            secret = c.secret
        channels.append(
            config.ChannelSpec(
                id=c.id, type=c.type, enabled=c.enabled, config=fields, secret=secret
            )
        )
    return config.SettingsSpec(
        threshold_pv=body.threshold_pv,
        expiry_reminder_days=tuple(body.expiry_reminder_days),
        channels=tuple(channels),
    )


@api.route(
    "PUT",
    "/v1/enterprises/{enterprise_id}/alerts",
    summary="Set alert threshold, reminders and channels",
    request_model=AlertsIn,
    response_model=AlertsOut,
    audit_action="alerts.put",
)
async def put_alerts(ctx: RequestContext, body: AlertsIn, enterprise_id: Id) -> AlertsOut:
    """Replaces the settings and the channel list (a channel not listed is removed; name an
    existing one by ``id`` to keep it and its secrets).  A new webhook channel's signing
    secret is in this answer only.  Evaluated at once: a threshold above the balance alerts
    now."""
    await services.visible_enterprise(ctx, enterprise_id)
    policy = ctx.app[ALERTS].policy
    with _in_body():
        saved = await config.save(
            ctx.db, ctx.audit, enterprise_id, _spec(body), now=services.now(ctx), policy=policy
        )
    await services.alerts_changed(ctx, enterprise_id, SETTINGS_CHANGED)
    view = config.settings_view(saved.settings, saved.channels)
    return _out(enterprise_id, view, True, dict(saved.new_secrets))


class ChannelRef(ApiModel):
    channel_id: Id


class SecretOut(ApiModel):
    enterprise_id: str
    channel_id: str
    signing_secret: str = Field(description="whsec_…, shown this once")
    previous_secret_until: datetime = Field(description="the old secret signs too until then")


@api.route(
    "POST",
    "/v1/enterprises/{enterprise_id}/alerts/secret",
    summary="Rotate a webhook channel's signing secret",
    request_model=ChannelRef,
    response_model=SecretOut,
    audit_action="alerts.rotate_secret",
)
async def rotate_secret(ctx: RequestContext, body: ChannelRef, enterprise_id: Id) -> SecretOut:
    """During the overlap (``[alerts] rotation_overlap_s``) both secrets sign every message:
    ``webhook-signature`` carries two ``v1,`` signatures."""
    await services.visible_enterprise(ctx, enterprise_id)
    overlap = timedelta(seconds=ctx.app[SETTINGS].alerts.rotation_overlap_s)
    with _in_body():
        channel, secret = await config.rotate_secret(
            ctx.db,
            ctx.audit,
            enterprise_id,
            body.channel_id,
            now=services.now(ctx),
            overlap=overlap,
        )
    assert channel.previous_secret_until is not None
    return SecretOut(
        enterprise_id=enterprise_id,
        channel_id=channel.id,
        signing_secret=secret,
        previous_secret_until=channel.previous_secret_until,
    )


class EventsQuery(ApiModel):
    kind: list[KindName] = Field(default_factory=list, description="repeat for several")
    since: QueryTime | None = Field(default=None, description="occurred at or after")
    until: QueryTime | None = Field(default=None, description="occurred before")
    limit: ParamInt = Field(default=50, ge=1, le=500)


class AttemptOut(ApiModel):
    number: int
    started_at: datetime
    duration_ms: int | None
    outcome: str | None = Field(
        description="sent, retry, failed, disabled, interrupted; null in flight"
    )
    status_code: int | None
    error: str
    response: str = Field(description="an excerpt of the receiver's reply")


class DeliveryOut(ApiModel):
    id: str
    event_id: str
    enterprise_id: str
    channel_id: str
    channel_type: str
    status: str = Field(description="pending, sent, failed or disabled")
    attempt_count: int
    next_attempt_at: datetime | None = Field(description="when pending")
    sent_at: datetime | None
    last_error: str
    attempts: list[AttemptOut]


class EventOut(ApiModel):
    id: str = Field(description="the webhook-id: the same on every retry")
    kind: str
    subject: str
    occurred_at: datetime
    data: dict[str, Any]
    deliveries: list[DeliveryOut]


class EventsOut(ApiModel):
    enterprise_id: str
    items: list[EventOut]


def _delivery(found: DeliveryHistory) -> DeliveryOut:
    d = found.delivery
    return DeliveryOut(
        id=d.id,
        event_id=d.event_id,
        enterprise_id=d.enterprise_id,
        channel_id=d.channel_id,
        channel_type=d.channel_type,
        status=d.status,
        attempt_count=d.attempts,
        next_attempt_at=d.next_attempt_at if d.status == "pending" else None,
        sent_at=d.sent_at,
        last_error=d.last_error,
        attempts=[AttemptOut.model_validate(a, from_attributes=True) for a in found.attempts],
    )


def _event(found: EventHistory) -> EventOut:
    e = found.event
    return EventOut(
        id=e.id,
        kind=e.kind,
        subject=e.subject,
        occurred_at=e.occurred_at,
        data=dict(e.payload.get("data", {})),
        deliveries=[_delivery(d) for d in found.deliveries],
    )


@api.route(
    "GET",
    "/v1/enterprises/{enterprise_id}/alerts/events",
    summary="Alert history: events, deliveries, attempts",
    query_model=EventsQuery,
    response_model=EventsOut,
)
async def list_alert_events(
    ctx: RequestContext, body: None, enterprise_id: Id, query: EventsQuery
) -> EventsOut:
    """Newest first; filter by ``kind`` (repeatable) and by the time they occurred."""
    if query.since is not None and query.until is not None and query.since >= query.until:
        raise ValidationFailed("query.since", "must be before until")
    await services.visible_enterprise(ctx, enterprise_id)
    async with ctx.db.engine.connect() as conn:
        found = await history.events(
            conn,
            enterprise_id,
            kinds=query.kind,
            since=query.since,
            until=query.until,
            limit=query.limit,
        )
    return EventsOut(enterprise_id=enterprise_id, items=[_event(e) for e in found])


class TestMessageOut(ApiModel):
    enterprise_id: str
    channel_id: str
    event_id: str
    delivery_id: str
    outcome: Literal["sent", "retry", "failed", "disabled"] = Field(
        description="of the first attempt; a retry is made on the usual schedule"
    )
    status_code: int | None
    error: str
    response: str
    duration_ms: int


@api.route(
    "POST",
    "/v1/enterprises/{enterprise_id}/alerts/test",
    summary="Send a test message to one channel",
    request_model=ChannelRef,
    response_model=TestMessageOut,
    audit_action="alerts.test",
)
async def send_test_alert(
    ctx: RequestContext, body: ChannelRef, enterprise_id: Id
) -> TestMessageOut:
    """Answers with the outcome of the first attempt, made during the request."""
    await services.visible_enterprise(ctx, enterprise_id)
    alerts = ctx.app.get(ALERTS)
    if alerts is None:
        raise BillingError("alerts are not running in this billing process")
    event, finished = await alerts.send_test(enterprise_id, body.channel_id)
    outcome = finished.outcome
    result = TestMessageOut(
        enterprise_id=enterprise_id,
        channel_id=body.channel_id,
        event_id=event.id,
        delivery_id=finished.claimed.job.delivery_id,
        outcome=outcome.result,
        status_code=outcome.status_code,
        error=outcome.error,
        response=outcome.response,
        duration_ms=finished.duration_ms,
    )
    async with ctx.db.begin() as conn:
        await ctx.audit(conn, enterprise_id=enterprise_id, after=result)
    return result


@api.route(
    "POST",
    "/v1/alerts/deliveries/{delivery_id}/retry",
    summary="Retry a delivery now (ops)",
    response_model=DeliveryOut,
    roles=("ops",),
    audit_action="alerts.retry",
)
async def retry_delivery(ctx: RequestContext, body: None, delivery_id: Id) -> DeliveryOut:
    """Due at once, its back-off schedule started afresh; a sent delivery is a 409."""
    found = await history.retry_delivery(ctx.db, ctx.audit, delivery_id, now=services.now(ctx))
    services.wake_alerts(ctx)
    return _delivery(found)
