"""The alert machinery of one billing process, built for tests around a controllable clock.

`Rig` holds `billing.alerts.service.Alerts` on the test's ledger (``db``: SQLite and
PostgreSQL) and the session's Redis, with the built-in kinds (`BUILTIN`) and ``[alerts]``
allowing http and 127.0.0.1 (the local servers), without jitter; `Rig.deliver` runs the
worker until nothing is due *at the clock's time* — no sleeping, the clock is moved instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from billing.alerts import Registry, config
from billing.alerts.builtin import register_builtin
from billing.alerts.rows import AttemptRow, DeliveryRow, EventRow
from billing.alerts.service import Alerts
from billing.audit import SystemAuditor
from billing.db import Database
from billing.operations import NewEnterprise, register_enterprise
from billing.outbound import OutboundPolicy
from billing.schema import alert_attempts, alert_deliveries, alert_events
from billing.settings import AlertsSection, BillingSettings
from metering import BalanceStore
from metering.buckets import BucketKind, BucketSpec, to_ms

ENT = "ent-alerts"
AUDIT = SystemAuditor("alerts-test")
# The built-in kinds only: other features add theirs to the process-wide registry.
BUILTIN = register_builtin(Registry())


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


def alert_settings(**alerts: Any) -> BillingSettings:
    section = {
        "allow_http": True,
        "allow_addresses": ("127.0.0.1",),
        "retry_jitter": 0.0,
        **alerts,
    }
    return BillingSettings(alerts=AlertsSection(**section))


def webhook(url: str, **fields: Any) -> config.ChannelSpec:
    return config.ChannelSpec(id=None, type="webhook", enabled=True, config={"url": url}, **fields)


def robot(key: str) -> config.ChannelSpec:
    return config.ChannelSpec(id=None, type="wecom_robot", enabled=True, config={}, secret=key)


def app(
    corp_id: str, secret: str, users: Sequence[str], agent_id: int = 1000002
) -> config.ChannelSpec:
    fields = {"corp_id": corp_id, "agent_id": agent_id, "to_users": list(users)}
    return config.ChannelSpec(id=None, type="wecom_app", enabled=True, config=fields, secret=secret)


@dataclass
class Rig:
    db: Database
    store: BalanceStore
    clock: Clock
    settings: BillingSettings
    registry: Registry = BUILTIN
    owner: str = "worker-1"
    alerts: Alerts = field(init=False)

    def __post_init__(self) -> None:
        self.alerts = Alerts.create(
            self.settings, self.db, self.store, self.registry, owner=self.owner, clock=self.clock
        )

    async def close(self) -> None:
        await self.alerts.close()

    async def enterprise(self, enterprise_id: str = ENT) -> None:
        await register_enterprise(
            self.db,
            AUDIT,
            NewEnterprise(id=enterprise_id, id_type="qidian", name="Alerts Ltd", industry="retail"),
        )

    async def configure(
        self,
        *channels: config.ChannelSpec,
        threshold: int = 100,
        days: tuple[int, ...] = (30, 7, 1),
        enterprise_id: str = ENT,
    ) -> config.Saved:
        conf = self.settings.alerts
        policy = OutboundPolicy.build(
            allow_http=conf.allow_http, allow_addresses=conf.allow_addresses
        )
        spec = config.SettingsSpec(
            threshold_pv=threshold, expiry_reminder_days=days, channels=channels
        )
        return await config.save(
            self.db, AUDIT, enterprise_id, spec, now=self.clock(), policy=policy
        )

    async def credit(
        self,
        pv: int,
        *,
        bucket: str = "gift-1",
        expires_in: timedelta = timedelta(days=365),
        enterprise_id: str = ENT,
    ) -> None:
        """A gift bucket in Redis, expiring ``expires_in`` after the clock's now."""
        await self.store.credit(
            enterprise_id,
            BucketSpec(
                id=bucket,
                kind=BucketKind.GIFT,
                granted=pv,
                expires_at=to_ms(self.clock() + expires_in),
                ordered_at=to_ms(self.clock()),
            ),
        )

    async def spend(self, pv: int, enterprise_id: str = ENT) -> None:
        debit = await self.store.debit(enterprise_id, pv)
        assert debit.granted == pv, debit

    async def evaluate(self, cause: str, enterprise_id: str = ENT) -> list[EventRow]:
        return await self.alerts.evaluator.evaluate([enterprise_id], cause=cause)

    async def deliver(self, rounds: int = 50) -> int:
        """Run the worker until nothing is due at the clock's now; attempts made."""
        worker, made = self.alerts.worker, 0
        for _ in range(rounds):
            started = await worker.run_once()
            await worker.drain()
            made += started
            if not started:
                return made
        raise AssertionError(f"deliveries still due after {rounds} rounds")

    async def events(self, enterprise_id: str = ENT) -> list[EventRow]:
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(alert_events)
                .where(alert_events.c.enterprise_id == enterprise_id)
                .order_by(alert_events.c.occurred_at, alert_events.c.created_at)
            )
            return [EventRow.from_row(r) for r in rows]

    async def kinds(self, enterprise_id: str = ENT) -> list[str]:
        return [e.kind for e in await self.events(enterprise_id)]

    async def deliveries(self) -> list[DeliveryRow]:
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(alert_deliveries).order_by(alert_deliveries.c.created_at)
            )
            return [DeliveryRow.from_row(r) for r in rows]

    async def attempts(self, delivery_id: str) -> list[AttemptRow]:
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(alert_attempts)
                .where(alert_attempts.c.delivery_id == delivery_id)
                .order_by(alert_attempts.c.number)
            )
            return [AttemptRow.from_row(r) for r in rows]
