"""``pvgate run``: billing (admin API, usage consumer, jobs) and the gateway, one machine.

Billing runs in the supervisor's event loop; the gateway's workers are its child
processes (docs/architecture.md §2).
"""

from __future__ import annotations

from aiohttp import web

from billing.db import Database
from billing.service import start_billing
from billing.settings import BillingSettings
from gateway.server import supervise
from gateway.settings import GatewaySettings


async def run_together(gateway: GatewaySettings, billing: BillingSettings) -> int:
    db = Database(billing.database_url)
    client = await billing.redis.open()
    runners: list[web.AppRunner] = []
    try:
        runners = await start_billing(billing, db, client)
        return await supervise(gateway)
    finally:
        for runner in runners:
            await runner.cleanup()
        await client.aclose()
        await db.dispose()
