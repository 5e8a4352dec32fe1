"""An enterprise's WeCom callback settings: token, EncodingAESKey, corp id, relay target.

The token and the EncodingAESKey are what WeCom signs and encrypts with, so the ledger keeps
them as given (``wecom_settings``); they are never shown again in full — not in answers, not
in the audit log, which records them masked.  The relay's signing secret (Standard
Webhooks, ``whsec_`` + base64 of 32 random bytes) is made by the first PUT, or a PUT that
rotates it, and shown in that answer only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.alerts.config import new_signing_secret
from billing.audit import Auditor
from billing.db import Database
from billing.interop.accounts import lock_enterprise
from billing.interop.records import WeComSettingsRow
from billing.interop.tables import wecom_settings


def mask(secret: str) -> str:
    """``secret`` with all but its last 4 characters hidden (all of a short one)."""
    if len(secret) <= 8:
        return "*" * len(secret)
    return "*" * (len(secret) - 4) + secret[-4:]


@dataclass(frozen=True, slots=True, kw_only=True)
class MaskedSettings:
    """What may be shown of `WeComSettingsRow`."""

    enterprise_id: str
    token: str
    encoding_aes_key: str
    corp_id: str
    relay_url: str
    relay_secret: str
    updated_at: datetime

    @classmethod
    def of(cls, row: WeComSettingsRow) -> MaskedSettings:
        return cls(
            enterprise_id=row.enterprise_id,
            token=mask(row.token),
            encoding_aes_key=mask(row.encoding_aes_key),
            corp_id=row.corp_id,
            relay_url=row.relay_url,
            relay_secret=mask(row.relay_secret),
            updated_at=row.updated_at,
        )


async def read_settings(conn: AsyncConnection, enterprise_id: str) -> WeComSettingsRow | None:
    row = (
        await conn.execute(
            sa.select(wecom_settings).where(wecom_settings.c.enterprise_id == enterprise_id)
        )
    ).first()
    return None if row is None else WeComSettingsRow.from_row(row)


async def put_settings(
    db: Database, audit: Auditor, new: WeComSettingsRow, *, rotate: bool = False
) -> tuple[WeComSettingsRow, str | None]:
    """Store the settings (replacing any), audited masked; (row, the relay secret if new).

    ``new.relay_secret`` is ignored: the stored secret is kept unless there is none yet or
    ``rotate`` asks for a new one.
    """
    async with db.begin() as conn:
        await lock_enterprise(conn, new.enterprise_id)
        before = await read_settings(conn, new.enterprise_id)
        made = new_signing_secret() if before is None or rotate else None
        new = dataclasses.replace(new, relay_secret=made or (before.relay_secret if before else ""))
        values = dataclasses.asdict(new)
        if before is None:
            await conn.execute(wecom_settings.insert().values(**values))
        else:
            await conn.execute(
                wecom_settings.update()
                .where(wecom_settings.c.enterprise_id == new.enterprise_id)
                .values(**values)
            )
        await audit(
            conn,
            "wecom.settings_update",
            new.enterprise_id,
            None if before is None else MaskedSettings.of(before),
            MaskedSettings.of(new),
        )
    return new, made
