"""The alert tables' rows as frozen value objects (`billing.rows` conventions)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self

from billing.rows import LedgerRow, RowLike, _mapping


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertSettingsRow(LedgerRow):
    enterprise_id: str
    threshold_pv: int
    expiry_reminder_days: tuple[int, ...]
    version: int
    next_due_at: datetime | None
    updated_at: datetime

    @classmethod
    def from_row(cls, row: RowLike) -> Self:
        m = _mapping(row)
        return cls(
            enterprise_id=m["enterprise_id"],
            threshold_pv=int(m["threshold_pv"]),
            expiry_reminder_days=tuple(int(d) for d in m["expiry_reminder_days"]),
            version=int(m["version"]),
            next_due_at=m["next_due_at"],
            updated_at=m["updated_at"],
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelRow(LedgerRow):
    id: str
    enterprise_id: str
    type: str  # webhook | wecom_robot | wecom_app
    enabled: bool
    config: Mapping[str, Any]  # url | corp_id, agent_id, to_users
    secret: str
    previous_secret: str | None
    previous_secret_until: datetime | None
    disabled_reason: str
    created_at: datetime
    updated_at: datetime

    def secrets_at(self, now: datetime) -> tuple[str, ...]:
        """The secrets that sign at ``now``: the current one, and the previous one during
        its rotation overlap."""
        if self.previous_secret and self.previous_secret_until and now < self.previous_secret_until:
            return (self.secret, self.previous_secret)
        return (self.secret,)


@dataclass(frozen=True, slots=True, kw_only=True)
class EventRow(LedgerRow):
    id: str
    enterprise_id: str
    kind: str
    subject: str
    payload: Mapping[str, Any]
    occurred_at: datetime
    created_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryRow(LedgerRow):
    id: str
    event_id: str
    enterprise_id: str
    channel_id: str
    channel_type: str
    target: str
    status: str  # pending | sent | failed | disabled
    attempts: int
    schedule_pos: int
    next_attempt_at: datetime
    lease_owner: str | None
    lease_until: datetime | None
    last_error: str
    sent_at: datetime | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptRow(LedgerRow):
    delivery_id: str
    number: int
    target: str
    worker: str
    started_at: datetime
    duration_ms: int | None
    outcome: str | None  # sent | retry | failed | disabled | interrupted; None in flight
    status_code: int | None
    error: str
    response: str
