"""The interop tables' rows as frozen value objects (`billing.rows`' convention, column for
column; tests/interop/test_records.py keeps them in step)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from billing.rows import LedgerRow


@dataclass(frozen=True, slots=True, kw_only=True)
class InteropOrderRow(LedgerRow):
    order_id: str
    accounts: int
    years: int
    mode: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LicenceBatchRow(LedgerRow):
    id: str
    enterprise_id: str
    order_id: str
    accounts: int
    years: int
    valid_from: datetime
    valid_until: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class InteropStateRow(LedgerRow):
    enterprise_id: str
    trial_ends_at: datetime | None
    trial_accounts: int | None
    settled_through: datetime | None
    updated_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberRow(LedgerRow):
    id: int
    enterprise_id: str
    userid: str
    assigned_at: datetime
    assigned_by: str
    released_at: datetime | None
    release_reason: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class WeComSettingsRow(LedgerRow):
    enterprise_id: str
    token: str
    encoding_aes_key: str
    corp_id: str
    relay_url: str
    relay_secret: str
    updated_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class WeComEventRow(LedgerRow):
    id: str
    enterprise_id: str
    received_at: datetime
    msg_key: str
    msg_type: str
    event: str
    change_type: str
    userid: str | None
    result: str
    message: str
