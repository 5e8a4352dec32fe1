"""An enterprise's alert settings and channels: read, saved (audited), secrets rotated.

Secrets — a webhook's signing secret (generated here, ``whsec_`` + base64 of 32 random
bytes, shown once), a robot's key, an app's secret — are stored for sending and never shown
in full again: `channel_view` masks them.  Every save bumps ``alert_settings.version``, so
an evaluator still holding the old settings flips no state (`billing.alerts.outbox`).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.alerts.kinds import AlertConfig
from billing.alerts.rows import AlertSettingsRow, ChannelRow
from billing.audit import Auditor
from billing.db import Database
from billing.errors import NotFound, ValidationFailed
from billing.ledger import get_enterprise
from billing.operations import new_id
from billing.outbound import OutboundPolicy, OutboundRefused
from billing.schema import alert_channels, alert_deliveries, alert_settings

DEFAULT_REMINDER_DAYS = (30, 7, 1)
CHANNEL_TYPES = ("webhook", "wecom_robot", "wecom_app")
SECRET_PREFIX = "whsec_"


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelSpec:
    """A channel as a PUT gives it; ``secret`` None keeps the stored one."""

    id: str | None
    type: str
    enabled: bool
    config: Mapping[str, Any]
    secret: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SettingsSpec:
    threshold_pv: int
    expiry_reminder_days: tuple[int, ...]
    channels: tuple[ChannelSpec, ...]


@dataclass(frozen=True, slots=True)
class Saved:
    settings: AlertSettingsRow
    channels: tuple[ChannelRow, ...]
    new_secrets: Mapping[str, str]  # channel id → its signing secret, shown this once


def new_signing_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def mask(secret: str) -> str:
    return "****" + secret[-4:] if len(secret) > 8 else "****"


def target_of(channel: ChannelRow) -> str:
    """The key a rate limit counts by: a robot is its key (channels may share one)."""
    if channel.type == "wecom_robot":
        return "robot:" + hashlib.sha256(channel.secret.encode()).hexdigest()[:40]
    return f"{channel.type}:{channel.id}"


def channel_view(channel: ChannelRow) -> dict[str, Any]:
    """A channel as the API shows it: no secret in full."""
    view: dict[str, Any] = {
        "id": channel.id,
        "type": channel.type,
        "enabled": channel.enabled,
        "disabled_reason": channel.disabled_reason or None,
        **channel.config,
    }
    if channel.type == "webhook":
        view["signing_secret"] = SECRET_PREFIX + mask(channel.secret)
        view["previous_secret_until"] = channel.previous_secret_until
    elif channel.type == "wecom_robot":
        view["key"] = mask(channel.secret)
    else:
        view["secret"] = mask(channel.secret)
    return view


def settings_view(
    settings: AlertSettingsRow | None, channels: Iterable[ChannelRow]
) -> dict[str, Any]:
    return {
        "threshold_pv": settings.threshold_pv if settings else 0,
        "expiry_reminder_days": list(
            settings.expiry_reminder_days if settings else DEFAULT_REMINDER_DAYS
        ),
        "channels": [channel_view(c) for c in channels],
    }


async def read(
    conn: AsyncConnection, enterprise_id: str
) -> tuple[AlertSettingsRow | None, list[ChannelRow]]:
    row = (
        await conn.execute(
            sa.select(alert_settings).where(alert_settings.c.enterprise_id == enterprise_id)
        )
    ).first()
    channels = await load_channels(conn, [enterprise_id])
    return (None if row is None else AlertSettingsRow.from_row(row)), channels.get(
        enterprise_id, []
    )


async def load_configs(conn: AsyncConnection, ids: Sequence[str]) -> dict[str, AlertConfig]:
    """The settings of those enterprises that have any (chunked IN lists)."""
    found: dict[str, AlertConfig] = {}
    for start in range(0, len(ids), 500):
        rows = await conn.execute(
            sa.select(alert_settings).where(
                alert_settings.c.enterprise_id.in_(ids[start : start + 500])
            )
        )
        for row in rows:
            s = AlertSettingsRow.from_row(row)
            found[s.enterprise_id] = AlertConfig(
                enterprise_id=s.enterprise_id,
                threshold_pv=s.threshold_pv,
                expiry_reminder_days=s.expiry_reminder_days,
                version=s.version,
                next_due_at=s.next_due_at,
            )
    return found


async def load_channels(conn: AsyncConnection, ids: Sequence[str]) -> dict[str, list[ChannelRow]]:
    found: dict[str, list[ChannelRow]] = {}
    for start in range(0, len(ids), 500):
        rows = await conn.execute(
            sa.select(alert_channels)
            .where(alert_channels.c.enterprise_id.in_(ids[start : start + 500]))
            .order_by(alert_channels.c.created_at, alert_channels.c.id)
        )
        for row in rows:
            channel = ChannelRow.from_row(row)
            found.setdefault(channel.enterprise_id, []).append(channel)
    return found


def _checked(
    specs: Sequence[ChannelSpec], known: Mapping[str, ChannelRow], policy: OutboundPolicy
) -> None:
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        where = f"channels.{i}"
        if spec.id is not None:
            if spec.id not in known:
                raise ValidationFailed(f"{where}.id", f"no channel {spec.id!r} to change")
            if spec.id in seen:
                raise ValidationFailed(f"{where}.id", f"channel {spec.id!r} is listed twice")
            if known[spec.id].type != spec.type:
                raise ValidationFailed(f"{where}.type", "a channel keeps its type")
            seen.add(spec.id)
        elif spec.type != "webhook" and spec.secret is None:
            field = "key" if spec.type == "wecom_robot" else "secret"
            raise ValidationFailed(f"{where}.{field}", "required for a new channel")
        if spec.type == "webhook":
            try:
                policy.check_url(str(spec.config["url"]))
            except (OutboundRefused, ValueError) as exc:
                raise ValidationFailed(f"{where}.url", str(exc)) from None


def _row(
    enterprise_id: str, spec: ChannelSpec, old: ChannelRow | None, now: datetime
) -> tuple[ChannelRow, str | None]:
    """The channel to store, and the signing secret to show (a new webhook only)."""
    shown = None
    if old is None:
        secret = spec.secret or new_signing_secret()
        shown = secret if spec.type == "webhook" else None
        return (
            ChannelRow(
                id=new_id("ch"),
                enterprise_id=enterprise_id,
                type=spec.type,
                enabled=spec.enabled,
                config=dict(spec.config),
                secret=secret,
                previous_secret=None,
                previous_secret_until=None,
                disabled_reason="",
                created_at=now,
                updated_at=now,
            ),
            shown,
        )
    return (
        dataclasses.replace(
            old,
            enabled=spec.enabled,
            config=dict(spec.config),
            secret=spec.secret or old.secret,
            disabled_reason="" if spec.enabled else old.disabled_reason,
            updated_at=now,
        ),
        shown,
    )


async def save(
    db: Database,
    audit: Auditor,
    enterprise_id: str,
    spec: SettingsSpec,
    *,
    now: datetime,
    policy: OutboundPolicy,
) -> Saved:
    """Replace the settings and channels (channels not listed are removed), audited."""
    async with db.begin() as conn:
        await get_enterprise(conn, enterprise_id)
        before, channels = await read(conn, enterprise_id)
        known = {c.id: c for c in channels}
        _checked(spec.channels, known, policy)
        settings = await _put_settings(conn, enterprise_id, spec, before, now)
        rows: list[ChannelRow] = []
        shown: dict[str, str] = {}
        for i, channel_spec in enumerate(spec.channels):
            # New channels of one request keep its order (channels are listed by creation).
            at = now + timedelta(microseconds=i)
            row, secret = _row(enterprise_id, channel_spec, known.get(channel_spec.id or ""), at)
            rows.append(row)
            if secret is not None:
                shown[row.id] = secret
        await _put_channels(conn, enterprise_id, rows, known, now)
        await audit(
            conn,
            "alerts.put",
            enterprise_id,
            settings_view(before, channels) if before or channels else None,
            settings_view(settings, rows),
        )
    return Saved(settings, tuple(rows), shown)


async def _put_settings(
    conn: AsyncConnection,
    enterprise_id: str,
    spec: SettingsSpec,
    before: AlertSettingsRow | None,
    now: datetime,
) -> AlertSettingsRow:
    values = {
        "threshold_pv": spec.threshold_pv,
        "expiry_reminder_days": list(spec.expiry_reminder_days),
        "updated_at": now,
    }
    if before is None:
        row = AlertSettingsRow(
            enterprise_id=enterprise_id,
            threshold_pv=spec.threshold_pv,
            expiry_reminder_days=spec.expiry_reminder_days,
            version=1,
            next_due_at=now,  # the scheduler looks at once
            updated_at=now,
        )
        await conn.execute(
            alert_settings.insert().values(
                **{
                    **dataclasses.asdict(row),
                    "expiry_reminder_days": list(row.expiry_reminder_days),
                }
            )
        )
        return row
    await conn.execute(
        alert_settings.update()
        .where(alert_settings.c.enterprise_id == enterprise_id)
        .values(**values, version=alert_settings.c.version + 1, next_due_at=now)
    )
    return dataclasses.replace(
        before,
        threshold_pv=spec.threshold_pv,
        expiry_reminder_days=spec.expiry_reminder_days,
        version=before.version + 1,
        next_due_at=now,
        updated_at=now,
    )


async def _put_channels(
    conn: AsyncConnection,
    enterprise_id: str,
    rows: Sequence[ChannelRow],
    known: Mapping[str, ChannelRow],
    now: datetime,
) -> None:
    removed = set(known) - {r.id for r in rows}
    if removed:
        await conn.execute(
            alert_deliveries.update()
            .where(
                alert_deliveries.c.channel_id.in_(removed),
                alert_deliveries.c.status == "pending",
            )
            .values(status="failed", last_error="channel removed", updated_at=now, lease_owner=None)
        )
        await conn.execute(alert_channels.delete().where(alert_channels.c.id.in_(removed)))
    for row in rows:
        values = dataclasses.asdict(row)
        if row.id in known:
            await conn.execute(
                alert_channels.update().where(alert_channels.c.id == row.id).values(**values)
            )
        else:
            await conn.execute(alert_channels.insert().values(**values))


async def rotate_secret(
    db: Database,
    audit: Auditor,
    enterprise_id: str,
    channel_id: str,
    *,
    now: datetime,
    overlap: timedelta,
) -> tuple[ChannelRow, str]:
    """A new signing secret for a webhook channel; the old one keeps signing for ``overlap``."""
    async with db.begin() as conn:
        row = (
            await conn.execute(
                sa.select(alert_channels).where(
                    alert_channels.c.id == channel_id,
                    alert_channels.c.enterprise_id == enterprise_id,
                )
            )
        ).first()
        if row is None:
            raise NotFound(f"channel {channel_id!r} not found")
        before = ChannelRow.from_row(row)
        if before.type != "webhook":
            raise ValidationFailed("channel_id", f"a {before.type} channel has no signing secret")
        secret = new_signing_secret()
        after = dataclasses.replace(
            before,
            secret=secret,
            previous_secret=before.secret,
            previous_secret_until=now + overlap,
            updated_at=now,
        )
        await conn.execute(
            alert_channels.update()
            .where(alert_channels.c.id == channel_id)
            .values(
                secret=secret,
                previous_secret=before.secret,
                previous_secret_until=after.previous_secret_until,
                updated_at=now,
            )
        )
        await audit(
            conn, "alerts.rotate_secret", enterprise_id, channel_view(before), channel_view(after)
        )
    return after, secret
