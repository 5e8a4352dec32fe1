"""The expiry job: every end of a trial or batch takes its accounts away at its instant.

Each pass settles every enterprise with an end between its settled mark and now
(`billing.interop.members.settle`): the members assigned last lose their accounts, recorded
at the end's exact instant however late the pass runs — after downtime, the first pass
catches up on every end it missed, in order.  The job then sleeps until the next end (at
most ``[interop] expiry_check_s``), so removals and their alerts follow an end within
moments.  Nothing waits for it: readers apply unsettled ends themselves
(`billing.interop.accounts`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from datetime import datetime

import sqlalchemy as sa
from aiohttp import web

from billing.audit import SystemAuditor
from billing.db import Database
from billing.interop import members
from billing.interop.accounts import periods_of
from billing.interop.alerts import INTEROP_CAUSE
from billing.interop.records import InteropStateRow, LicenceBatchRow
from billing.interop.rules import drop_instants
from billing.interop.runtime import InteropRuntime
from billing.interop.tables import interop_state, licence_batches
from billing.rows import EnterpriseRow
from billing.schema import enterprises

log = logging.getLogger("pvgate.billing.interop")
MIN_SLEEP_S = 0.05


async def due(
    db: Database, runtime: InteropRuntime, now: datetime
) -> tuple[list[str], datetime | None]:
    """The enterprises with an end in (their mark, ``now``], and the first end after ``now``."""
    async with db.engine.connect() as conn:
        ents = [EnterpriseRow.from_row(r) for r in await conn.execute(sa.select(enterprises))]
        states = {
            r.enterprise_id: InteropStateRow.from_row(r)
            for r in await conn.execute(sa.select(interop_state))
        }
        batches: dict[str, list[LicenceBatchRow]] = defaultdict(list)
        for r in await conn.execute(sa.select(licence_batches)):
            batches[r.enterprise_id].append(LicenceBatchRow.from_row(r))
    found: list[str] = []
    upcoming: datetime | None = None
    for enterprise in ents:
        state = states.get(enterprise.id)
        periods = periods_of(enterprise, state, batches[enterprise.id], runtime.policy)
        if drop_instants(periods, state.settled_through if state else None, now):
            found.append(enterprise.id)
        later = [p.ends_at for p in periods if p.ends_at > now]
        if later and (upcoming is None or min(later) < upcoming):
            upcoming = min(later)
    return found, upcoming


async def settle_due(db: Database, runtime: InteropRuntime) -> tuple[int, datetime | None]:
    """One pass: (members who lost their account, the next end to wake up for)."""
    now = runtime.clock.now()
    enterprise_ids, upcoming = await due(db, runtime, now)
    audit = SystemAuditor("interop-expiry")
    removed = 0
    for enterprise_id in enterprise_ids:
        removals = await members.settle(db, audit, enterprise_id, now, runtime.policy)
        removed += len(removals)
        if runtime.changed is not None:  # removal and expiry alerts, at once
            await runtime.changed(enterprise_id, INTEROP_CAUSE)
    return removed, upcoming


async def run(db: Database, runtime: InteropRuntime, stop: asyncio.Event) -> None:
    """Pass after pass until ``stop``; a failed pass is logged and tried again."""
    longest = runtime.section.expiry_check_s
    while not stop.is_set():
        upcoming = None
        try:
            removed, upcoming = await settle_due(db, runtime)
            if removed:
                log.info("interop expiry: %d members lost their accounts", removed)
        except Exception:
            log.exception("interop expiry pass failed")
        wait = longest
        if upcoming is not None:
            until = (upcoming - runtime.clock.now()).total_seconds()
            wait = min(longest, max(MIN_SLEEP_S, until))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), wait)


def background(
    db: Database, runtime: InteropRuntime
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The job for the admin app's ``cleanup_ctx``: started with it, stopped with it."""

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task = asyncio.create_task(run(db, runtime, stop))
        yield
        stop.set()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, 5)

    return lifetime
