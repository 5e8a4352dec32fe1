"""The billing side of the `pvgate` command line: migrate, token, reconcile."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import sys
from datetime import timedelta

import orjson

from billing import reconcile
from billing.api.auth import create_token
from billing.consumer import UsageConsumer
from billing.db import Database, migrate
from billing.settings import BillingSettings
from metering import BalanceStore


def run_migrate(settings: BillingSettings) -> int:
    migrate(settings.database_url)
    print(f"ledger schema up to date: {settings.database_url}")
    return 0


async def _token(settings: BillingSettings, role: str, label: str) -> int:
    db = Database(settings.database_url)
    try:
        await db.check_schema()
        token_id, plaintext = await create_token(db, role, label)
    finally:
        await db.dispose()
    print(f"token {token_id} for role {role} (shown once, stored only as a hash):")
    print(plaintext)
    return 0


def run_token_create(settings: BillingSettings, role: str, label: str) -> int:
    return asyncio.run(_token(settings, role, label))


async def _reconcile(settings: BillingSettings, settle: float) -> int:
    db = Database(settings.database_url)
    client = await settings.redis.open()
    try:
        await db.check_schema()
        store = BalanceStore(client)
        consumer = UsageConsumer(db, client, f"reconcile-{socket.gethostname()}-{os.getpid()}")
        booked = await reconcile.reconcile(
            db, store, settle=settle, drain=consumer.drain, settled=consumer.settled
        )
        expired = await reconcile.record_expirations(
            db, store, grace=timedelta(seconds=settings.reconcile.expiry_grace_s)
        )
    finally:
        await client.aclose()
        await db.dispose()
    report = {
        "booked": [dataclasses.asdict(d) | {"delta": d.delta} for d in booked],
        "expirations_recorded": expired,
    }
    sys.stdout.buffer.write(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


def run_reconcile(settings: BillingSettings, settle: float) -> int:
    return asyncio.run(_reconcile(settings, settle))
