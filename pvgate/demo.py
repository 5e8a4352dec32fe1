"""``pvgate demo``: everything on one machine with nothing to install or configure.

A Redis server from the bundled binary, a SQLite ledger, a sample origin serving a real
landing page (HTML, CSS, JS, an image), the billing service and the gateway, with one
enterprise seeded with a small gift balance and its site approved, and a low-balance alert
by webhook to a receiver the demo runs, which prints each alert it verifies
(`pvgate.demo_alerts`).  It prints where to look and an ops token for the admin API, and
runs until Ctrl-C.  State lives in ``--dir`` (default ``.pvgate-demo``), so a second run
continues where the first stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from importlib import resources
from pathlib import Path

import sqlalchemy as sa
from aiohttp import web

from billing import operations
from billing.api.auth import create_token
from billing.audit import SystemAuditor
from billing.db import Database
from billing.errors import Conflict
from billing.schema import gifts, sites
from billing.settings import BillingSettings
from gateway.settings import GatewaySettings, RedisSection
from metering import BalanceStore
from metering.connection import RedisSettings
from metering.logs import configure_logging
from metering.sites import Site, SiteRegistry, SiteStatus
from pvgate import demo_alerts
from pvgate.embedded import RedisServer, free_port
from pvgate.run import run_together

log = logging.getLogger("pvgate.demo")
ENTERPRISE = "demo-shop"
HOSTS = ("localhost", "127.0.0.1")


async def _origin() -> tuple[web.AppRunner, str]:
    """The sample landing page, as an origin on a free loopback port."""
    site = resources.files("pvgate") / "demo_site"
    index = Path(str(site / "index.html"))

    async def landing_page(request: web.Request) -> web.FileResponse:
        return web.FileResponse(index)

    app = web.Application()
    app.router.add_get("/", landing_page)
    app.router.add_static("/static", Path(str(site)))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def _seed(
    db: Database, store: BalanceStore, registry: SiteRegistry, origin: str, gift_pv: int
) -> None:
    """The demo enterprise, its gift and its approved sites; again on every start."""
    audit = SystemAuditor("demo")
    with contextlib.suppress(Conflict):  # registered by an earlier run
        await operations.register_enterprise(
            db,
            audit,
            {
                "id": ENTERPRISE,
                "id_type": "qidian",
                "name": "Demo Shop",
                "industry": "retail",
                "verified": True,
                "partner_id": None,
            },
        )
    async with db.engine.connect() as conn:
        has_gift = await conn.scalar(
            sa.select(gifts.c.id).where(gifts.c.enterprise_id == ENTERPRISE)
        )
    if not has_gift:
        await operations.grant_gift(
            db,
            store,
            audit,
            ENTERPRISE,
            pv=gift_pv,
            reason="demo balance",
            order_id=None,
            expires_at=None,
            tz="Asia/Shanghai",
        )
    for host in HOSTS:
        site = Site(host=host, enterprise_id=ENTERPRISE, origin=origin, status=SiteStatus.APPROVED)
        async with db.begin() as conn:
            await conn.execute(sa.delete(sites).where(sites.c.key == site.key))
            await conn.execute(
                sites.insert().values(
                    key=site.key,
                    enterprise_id=ENTERPRISE,
                    status="approved",
                    review_note="demo",
                    updated_at=sa.func.now(),
                    definition={
                        "host": host,
                        "path_prefix": "",
                        "origin": origin,
                        "include": [],
                        "exclude": [],
                    },
                )
            )
        await registry.put(site)


def run_demo(args: argparse.Namespace) -> int:
    configure_logging("warning")
    workdir = Path(args.dir).resolve()
    (workdir / "redis").mkdir(parents=True, exist_ok=True)
    redis = RedisServer(aof=True, directory=workdir / "redis", aof_name="demo.aof").start()
    try:
        return asyncio.run(_run(args, workdir, redis))
    finally:
        redis.stop()


async def _run(args: argparse.Namespace, workdir: Path, redis: RedisServer) -> int:
    origin_runner, origin = await _origin()
    billing = BillingSettings(
        listen=args.admin_listen,
        metrics_listen=args.billing_metrics_listen,
        database_url=f"sqlite:///{workdir / 'ledger.db'}",
        redis=RedisSettings(url=redis.url),
        log_level="warning",
        alerts=demo_alerts.DEMO_ALERTS,
    )
    gateway = GatewaySettings(
        listen=args.listen,
        metrics_listen=args.metrics_listen,
        redis=RedisSection(url=redis.url),
        log_level="warning",
    )
    receiver = demo_alerts.AlertReceiver()
    await receiver.start()
    db = Database(billing.database_url)
    try:
        await db.migrate()
        client = await billing.redis.open()
        try:
            await _seed(db, BalanceStore(client), SiteRegistry(client), origin, args.gift_pv)
        finally:
            await client.aclose()
        await demo_alerts.configure(db, ENTERPRISE, receiver, args.gift_pv)
        _, token = await create_token(db, "ops", "demo")
    finally:
        await db.dispose()
    try:
        _banner(args, token, demo_alerts.describe(receiver, args.gift_pv))
        return await run_together(gateway, billing)
    finally:
        await receiver.stop()
        await origin_runner.cleanup()


def _banner(args: argparse.Namespace, token: str, alerts: str) -> None:
    gateway = f"http://{args.listen.replace('127.0.0.1', 'localhost')}/"
    print(
        f"""
pvgate demo is running (Ctrl-C stops it; state in {args.dir})

  landing page  {gateway}   each view takes 1 PV of {ENTERPRISE}'s balance
  balance       curl -H 'Authorization: Bearer {token}' \\
                  http://{args.admin_listen}/v1/enterprises/{ENTERPRISE}/balance
  admin API     http://{args.admin_listen}/openapi.json
  alerts        {alerts}
  metrics       http://{args.metrics_listen}/metrics
  ops token     {token}
""",
        flush=True,
    )
