"""`Alerts`: the evaluator, the delivery worker and the scheduler of one billing process.

Built from ``[alerts]`` (`billing.settings.AlertsSection`) by `Alerts.create`; `run` keeps
the three going until told to stop; `changed` is what a balance-changing operation calls
(an evaluation now, whose failure never fails the operation: the sweep catches up);
`send_test` is ``POST …/alerts/test``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa

from billing.alerts.channels.base import Channel, Job, Renderer
from billing.alerts.channels.webhook import WebhookChannel
from billing.alerts.channels.wecom import AppChannel, RobotChannel, TokenCache
from billing.alerts.config import target_of
from billing.alerts.deliveries import Claimed, ClaimRules, Finished, RetryRules, begin_attempts
from billing.alerts.evaluator import Clock, Evaluator, utc_now
from billing.alerts.kinds import TEST_KIND, Registry
from billing.alerts.outbox import event_payload, insert_event, new_event_id
from billing.alerts.rows import ChannelRow, EventRow
from billing.alerts.scheduler import Scheduler
from billing.alerts.worker import DeliveryWorker
from billing.db import Database
from billing.errors import NotFound
from billing.outbound import OutboundClient, OutboundPolicy
from billing.schema import alert_channels
from billing.settings import AlertsSection, BillingSettings
from metering import BalanceStore

log = logging.getLogger("pvgate.alerts")


def worker_name(settings: BillingSettings) -> str:
    """This process's name as lease owner: the consumer's, else host name and pid."""
    return settings.consumer.name or f"{socket.gethostname()}-{os.getpid()}"


def _channels(
    conf: AlertsSection, policy: OutboundPolicy, renderer: Renderer
) -> tuple[dict[str, Channel], tuple[OutboundClient, ...]]:
    """The channel adapters, and the outbound clients they share (to close)."""
    wecom_policy = OutboundPolicy(  # the base is the operator's: http if it says so
        allow_http=conf.wecom_base.startswith("http:"), allow=policy.allow
    )
    webhooks = OutboundClient(policy, timeout=conf.timeout_s)
    wecom = OutboundClient(wecom_policy, timeout=conf.timeout_s)
    channels: dict[str, Channel] = {
        "webhook": WebhookChannel(webhooks),
        "wecom_robot": RobotChannel(wecom, conf.wecom_base, renderer),
        "wecom_app": AppChannel(
            wecom, conf.wecom_base, renderer, TokenCache(wecom, conf.wecom_base)
        ),
    }
    return channels, (webhooks, wecom)


@dataclass
class Alerts:
    conf: AlertsSection
    db: Database
    registry: Registry
    policy: OutboundPolicy
    evaluator: Evaluator
    worker: DeliveryWorker
    scheduler: Scheduler
    clients: tuple[OutboundClient, ...]
    clock: Clock

    @classmethod
    def create(
        cls,
        settings: BillingSettings,
        db: Database,
        store: BalanceStore,
        registry: Registry,
        *,
        owner: str | None = None,
        clock: Clock = utc_now,
    ) -> Alerts:
        conf = settings.alerts
        policy = OutboundPolicy.build(
            allow_http=conf.allow_http, allow_addresses=conf.allow_addresses
        )
        channels, clients = _channels(conf, policy, Renderer(registry, settings.timezone))
        worker = DeliveryWorker(
            db,
            channels,
            ClaimRules(
                owner=owner or worker_name(settings),
                lease=timedelta(seconds=conf.lease_s),
                robot_per_minute=conf.robot_per_minute,
            ),
            RetryRules(schedule=conf.retry_schedule_s, jitter=conf.retry_jitter),
            concurrency=conf.concurrency,
            poll_interval=conf.poll_interval_s,
            send_within=conf.lease_s / 2,
            clock=clock,
        )
        evaluator = Evaluator(db, store, registry, clock=clock, on_events=lambda _e: worker.wake())
        scheduler = Scheduler(
            db,
            evaluator,
            poll_interval=conf.poll_interval_s,
            sweep_interval=conf.scheduler_interval_s,
            retention=timedelta(days=conf.attempts_retention_days),
            clock=clock,
        )
        return cls(conf, db, registry, policy, evaluator, worker, scheduler, clients, clock)

    async def run(self, stop: asyncio.Event) -> None:
        """The evaluator, the worker and the scheduler, until ``stop`` is set."""
        await asyncio.gather(
            self.evaluator.run(stop), self.worker.run(stop), self.scheduler.run(stop)
        )

    async def changed(self, enterprise_id: str, cause: str) -> None:
        """Evaluate one enterprise now, after a change of its balance or settings."""
        try:
            await self.evaluator.evaluate([enterprise_id], cause=cause)
        except Exception:  # the operation stands; the scheduler's sweep evaluates again
            log.exception("alert evaluation of %s after %s failed", enterprise_id, cause)

    async def send_test(self, enterprise_id: str, channel_id: str) -> tuple[EventRow, Finished]:
        """A test message to one channel, its first attempt made now; (event, outcome)."""
        now = self.clock()
        owner = f"api-{uuid.uuid4().hex[:12]}"
        async with self.db.begin() as conn:
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
            channel = ChannelRow.from_row(row)
            event_id = new_event_id()
            data = {"enterprise_id": enterprise_id, "subject": "", "channel_id": channel_id}
            event = EventRow(
                id=event_id,
                enterprise_id=enterprise_id,
                kind=TEST_KIND,
                subject="",
                payload=event_payload(event_id, TEST_KIND, now, data),
                occurred_at=now,
                created_at=now,
            )
            lease = (owner, now + timedelta(seconds=self.conf.lease_s))
            [delivery_id] = await insert_event(conn, event, [channel], now, lease=lease)
            target = target_of(channel)
            await begin_attempts(conn, [(delivery_id, 1, target)], owner, now)
        job = Job(
            delivery_id=delivery_id,
            attempt=1,
            event=event,
            channel=channel,
            channel_type=channel.type,
            target=target,
        )
        return event, await self.worker.attempt(Claimed(job, 0), owner)

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
