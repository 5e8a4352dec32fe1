"""The evaluator: facts in, state changes out, through the outbox (docs/rules.md §4).

An evaluation of some enterprises reads their settings (those without are skipped), loads
each source once for all of them — the ``balance`` source is ONE snapshot per enterprise —
lets every kind observe, compares with the stored states, and hands what moved to
`billing.alerts.outbox.apply`.  Enterprises whose settings changed meanwhile are planned
again from fresh settings.  The events written wake the delivery worker.

`Evaluator.touch` is how the usage consumer asks, after each committed batch, for the
enterprises it touched: the ids are coalesced in a set and a background task
(`Evaluator.run`) evaluates whatever accumulated, so a burst of batches costs one balance
read per enterprise per round and never holds up the consumer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from billing.alerts.config import load_configs
from billing.alerts.kinds import TOP_UPS, USAGE, AlertConfig, Context, Registry, SourceEnv
from billing.alerts.outbox import Change, apply
from billing.alerts.rows import EventRow
from billing.db import Database
from billing.schema import alert_settings, alert_states
from metering import BalanceStore
from metering.buckets import to_ms

log = logging.getLogger("pvgate.alerts")

Clock = Callable[[], datetime]
StoredStates = Mapping[tuple[str, str, str], tuple[str, int]]  # key → (state, observed_ms)


def utc_now() -> datetime:
    return datetime.now(UTC)


def plan(
    registry: Registry, contexts: Iterable[Context], stored: StoredStates
) -> tuple[list[Change], dict[str, datetime | None]]:
    """The state changes the kinds observe (pure), and each enterprise's next due time."""
    changes: list[Change] = []
    due: dict[str, datetime | None] = {}
    for ctx in contexts:
        times: list[datetime] = []
        for kind in registry.kinds:
            if kind.source not in ctx.facts:
                continue
            for seen in kind.observe(ctx):
                key = (ctx.enterprise_id, kind.name, seen.subject)
                before, observed_ms = stored.get(key, (None, -1))
                current = kind.initial if before is None else before
                at = seen.at or ctx.now
                if seen.state == current or to_ms(at) < observed_ms:
                    continue
                changes.append(
                    Change(
                        enterprise_id=ctx.enterprise_id,
                        kind=kind.name,
                        subject=seen.subject,
                        before=before,
                        after=seen.state,
                        observed_ms=to_ms(at),
                        fires=kind.fires(current, seen.state),
                        data=seen.detail,
                        occurred_at=at,
                    )
                )
            when = kind.due(ctx) if kind.due else None
            if when is not None:
                times.append(when)
        due[ctx.enterprise_id] = min(times) if times else None
    return changes, due


class Evaluator:
    def __init__(
        self,
        db: Database,
        store: BalanceStore,
        registry: Registry,
        *,
        clock: Clock = utc_now,
        on_events: Callable[[list[EventRow]], None] | None = None,
    ) -> None:
        self.db, self.registry, self.clock = db, registry, clock
        self.env = SourceEnv(db=db, store=store)
        self.on_events = on_events
        self._touched: dict[str, str] = {}
        self._wake = asyncio.Event()

    async def evaluate(
        self, enterprise_ids: Iterable[str], *, cause: str, sources: Iterable[str] | None = None
    ) -> list[EventRow]:
        """Evaluate now (only ``sources``' kinds if given); the events written."""
        ids = sorted(set(enterprise_ids))
        async with self.db.engine.connect() as conn:
            configs = await load_configs(conn, ids)
        events: list[EventRow] = []
        for _round in range(3):  # settings changing under us three times running is rare
            if not configs:
                break
            now = self.clock()
            contexts = await self._contexts(configs, now, cause, sources)
            stored = await self._stored(list(configs))
            changes, due = plan(self.registry, contexts, stored)
            applied = await apply(self.db, changes, configs, now)
            events += applied.events
            if sources is None:  # a partial evaluation does not know every kind's due time
                await self._set_due(configs, due, applied.stale)
            if not applied.stale:
                break
            async with self.db.engine.connect() as conn:
                configs = await load_configs(conn, sorted(applied.stale))
        if events and self.on_events is not None:
            self.on_events(events)
        return events

    async def _contexts(
        self,
        configs: Mapping[str, AlertConfig],
        now: datetime,
        cause: str,
        only: Iterable[str] | None,
    ) -> list[Context]:
        wanted = set(only) if only is not None else None
        ids = list(configs)
        facts: dict[str, dict[str, Any]] = {e: {} for e in ids}
        for source in self.registry.sources:
            if wanted is not None and source.name not in wanted:
                continue
            loaded = await source.load(self.env, ids, now)
            for enterprise_id, value in loaded.items():
                if enterprise_id in facts:
                    facts[enterprise_id][source.name] = value
        return [
            Context(config=configs[e], now=now, cause=cause, facts=facts[e])
            for e in ids
            if facts[e]
        ]

    async def _stored(self, ids: Sequence[str]) -> dict[tuple[str, str, str], tuple[str, int]]:
        found: dict[tuple[str, str, str], tuple[str, int]] = {}
        async with self.db.engine.connect() as conn:
            for start in range(0, len(ids), 500):
                rows = await conn.execute(
                    sa.select(
                        alert_states.c.enterprise_id,
                        alert_states.c.kind,
                        alert_states.c.subject,
                        alert_states.c.state,
                        alert_states.c.observed_ms,
                    ).where(alert_states.c.enterprise_id.in_(ids[start : start + 500]))
                )
                for e, k, s, state, ms in rows:
                    found[(e, k, s)] = (state, int(ms))
        return found

    async def _set_due(
        self,
        configs: Mapping[str, AlertConfig],
        due: Mapping[str, datetime | None],
        stale: set[str],
    ) -> None:
        """Store each enterprise's next due time where it moved (not for stale ones)."""
        moved = {
            e: when for e, when in due.items() if e not in stale and when != configs[e].next_due_at
        }
        if not moved:
            return
        async with self.db.begin() as conn:
            for enterprise_id, when in sorted(moved.items()):
                await conn.execute(
                    alert_settings.update()
                    .where(
                        alert_settings.c.enterprise_id == enterprise_id,
                        alert_settings.c.version == configs[enterprise_id].version,
                    )
                    .values(next_due_at=when)
                )

    def touch(self, enterprise_ids: Iterable[str], cause: str = USAGE) -> None:
        """Ask for an evaluation soon (coalesced); never blocks, never fails."""
        for enterprise_id in enterprise_ids:
            if cause in TOP_UPS or enterprise_id not in self._touched:
                self._touched[enterprise_id] = cause  # a top-up may raise, usage only lower
        if self._touched:
            self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Evaluate what `touch` collected, round after round, until ``stop``."""
        while not stop.is_set():
            stopping = asyncio.ensure_future(stop.wait())
            waking = asyncio.ensure_future(self._wake.wait())
            await asyncio.wait((stopping, waking), return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            waking.cancel()
            self._wake.clear()
            await self.evaluate_touched()

    async def evaluate_touched(self) -> list[EventRow]:
        touched, self._touched = self._touched, {}
        by_cause: dict[str, list[str]] = {}
        for enterprise_id, cause in touched.items():
            by_cause.setdefault(cause, []).append(enterprise_id)
        events: list[EventRow] = []
        for cause, ids in by_cause.items():
            try:
                events += await self.evaluate(ids, cause=cause)
            except Exception:  # the sweep evaluates them again; the consumer goes on
                log.exception("alert evaluation of %d enterprises failed", len(ids))
        return events
