"""The alert scheduler: time-driven kinds when they fall due, a sweep, and purging.

Each enterprise's next due moment (the soonest any kind's ``due`` answers: an expiry
reminder, an expiry) is stored in ``alert_settings.next_due_at``, so it survives a restart:
the first look after downtime finds the moments that passed meanwhile and evaluates them
once — the stored states make each reminder go out once, however late.  Every
``scheduler_interval_s`` a sweep evaluates every configured enterprise as a safety net
(an evaluation that failed, an operation outside the API) — a sweep only ever lowers a
balance state, it never re-arms — and attempts of finished deliveries older than the
retention are deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import timedelta

import sqlalchemy as sa

from billing.alerts import deliveries
from billing.alerts.evaluator import Clock, Evaluator, utc_now
from billing.alerts.kinds import SCHEDULE, SWEEP
from billing.alerts.rows import EventRow
from billing.db import Database
from billing.schema import alert_settings

log = logging.getLogger("pvgate.alerts.scheduler")

_CHUNK = 500


class Scheduler:
    def __init__(
        self,
        db: Database,
        evaluator: Evaluator,
        *,
        poll_interval: float = 1.0,
        sweep_interval: float = 60.0,
        retention: timedelta = timedelta(days=30),
        clock: Clock = utc_now,
    ) -> None:
        self.db, self.evaluator, self.clock = db, evaluator, clock
        self.poll_interval, self.sweep_interval, self.retention = (
            poll_interval,
            sweep_interval,
            retention,
        )

    async def run_due(self) -> list[EventRow]:
        """Evaluate the enterprises whose next due moment has come; the events written."""
        query = (
            sa.select(alert_settings.c.enterprise_id)
            .where(alert_settings.c.next_due_at <= self.clock())
            .order_by(alert_settings.c.next_due_at)
            .limit(_CHUNK)
        )
        async with self.db.engine.connect() as conn:
            due = list((await conn.execute(query)).scalars())
        return await self.evaluator.evaluate(due, cause=SCHEDULE) if due else []

    async def sweep(self) -> list[EventRow]:
        async with self.db.engine.connect() as conn:
            ids = list((await conn.execute(sa.select(alert_settings.c.enterprise_id))).scalars())
        events: list[EventRow] = []
        for start in range(0, len(ids), _CHUNK):
            events += await self.evaluator.evaluate(ids[start : start + _CHUNK], cause=SWEEP)
        return events

    async def purge(self) -> int:
        return await deliveries.purge_attempts(self.db, self.clock() - self.retention)

    async def run(self, stop: asyncio.Event) -> None:
        swept = time.monotonic()
        while not stop.is_set():
            try:
                await self.run_due()
                if time.monotonic() - swept >= self.sweep_interval:
                    swept = time.monotonic()
                    await self.sweep()
                    purged = await self.purge()
                    if purged:
                        log.info("purged %d old delivery attempts", purged)
            except Exception:  # retried at the next look; nothing due is lost
                log.exception("alert scheduler round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_interval)
