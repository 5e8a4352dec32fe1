"""Fixtures of the admin API contract tests: the FULL billing app on a real loopback port.

`running_admin` starts what ``pvgate billing`` serves — `billing.service.build_app` with the
business routes, the Redis-backed BalanceStore and SiteRegistry, the usage consumer, served
by `AdminRunner` as `billing.service.start_billing` serves it — on a migrated ledger and the
session's single Redis node (flushed first), makes one token per role and seeds, through
the API itself as ops:

    partner p1 ── ent-a (wecom, retail)   order A: pv_1m × 1, paid; gift of 1,000 PV tied
                                          to order A; site shop-a.test (pending)
    partner p2 ── ent-b (qidian, retail)  order B: pv_1m × 1, paid; site shop-b.test

Both enterprises are registered unverified and then verified with a PATCH.  Partners have no
route, so their rows are inserted directly.  ``admin`` runs on the suite's ``db``
(tests/conftest.py): SQLite and, when ``PVGATE_TEST_POSTGRES_URL`` is set, PostgreSQL (a
database created per test); ``sqlite_admin`` only on SQLite, ``pg_admin`` only on
PostgreSQL; ``make_admin`` / ``make_sqlite_admin`` take other `BillingSettings`.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from billing.api.auth import create_token
from billing.api.server import AdminRunner
from billing.db import Database
from billing.schema import partners
from billing.service import build_app
from billing.settings import BillingSettings
from metering.connection import RedisSettings
from metering.scripts import RedisClient
from pvgate.embedded import RedisServer, free_port

ENT_A, ENT_B = "ent-a", "ent-b"
PARTNER_A, PARTNER_B = "p1", "p2"
SITE_A, SITE_B = "shop-a.test", "shop-b.test"
GIFT_PV = 1_000
# Nothing listens on the discard port: the reviewer's fetch fails fast (deny list or not).
DEAD_ORIGIN = "http://127.0.0.1:9"
AUTO = object()  # `ApiClient.call(key=AUTO)`: a fresh Idempotency-Key on every POST


@dataclass(frozen=True)
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    raw: bytes

    @property
    def body(self) -> Any:
        return orjson.loads(self.raw) if self.raw else None

    @property
    def code(self) -> str | None:
        """The ``error.code`` of an error body, or None."""
        body = self.body
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            return str(body["error"].get("code"))
        return None

    def __str__(self) -> str:
        return f"{self.status} {self.raw[:600]!r}"


class ApiClient:
    """JSON over HTTP to the admin API; a POST gets a fresh ``Idempotency-Key`` by default."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url

    async def call(
        self,
        method: str,
        path: str,
        token: str | None,
        json: Any = None,
        *,
        params: Mapping[str, str] | None = None,
        key: object = AUTO,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        sent: dict[str, str] = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        if key is AUTO:
            key = f"test-{uuid.uuid4()}" if method == "POST" else None
        if key is not None:
            sent["Idempotency-Key"] = str(key)
        data = None
        if json is not None:
            data = orjson.dumps(json)
            sent["Content-Type"] = "application/json"
        async with self.session.request(
            method, self.base_url + path, data=data, params=params, headers=sent
        ) as resp:
            return Reply(resp.status, resp.headers, await resp.read())


def expect(reply: Reply, status: int, code: str | None = None) -> Any:
    """Assert the status (and error code); the parsed body."""
    assert reply.status == status, f"expected {status}, got {reply}"
    if code is not None:
        assert reply.code == code, f"expected code {code!r}, got {reply}"
    return reply.body


@dataclass(frozen=True)
class Tokens:
    ops: str
    partner_a: str
    partner_b: str
    merchant_a: str
    merchant_b: str
    ids: Mapping[str, str]


ROLES = {
    "ops": "ops",
    "partner_a": f"partner:{PARTNER_A}",
    "partner_b": f"partner:{PARTNER_B}",
    "merchant_a": f"merchant:{ENT_A}",
    "merchant_b": f"merchant:{ENT_B}",
}


async def make_tokens(db: Database) -> Tokens:
    ids: dict[str, str] = {}
    plain: dict[str, str] = {}
    for name, role in ROLES.items():
        ids[name], plain[name] = await create_token(db, role, label=f"admin tests {name}")
    return Tokens(ids=ids, **plain)


@dataclass(frozen=True)
class Seed:
    order_a: dict[str, Any]
    order_b: dict[str, Any]
    gift_a: dict[str, Any]


@dataclass
class AdminServer:
    url: str
    app: web.Application
    db: Database
    redis: RedisClient
    settings: BillingSettings
    api: ApiClient
    tokens: Tokens
    seed: Seed | None = None

    async def ops(self, method: str, path: str, json: Any = None, **kwargs: Any) -> Reply:
        return await self.api.call(method, path, self.tokens.ops, json, **kwargs)

    async def ok(self, method: str, path: str, json: Any = None, status: int = 200) -> Any:
        """An ops call that must answer ``status``; its body."""
        return expect(await self.ops(method, path, json), status)

    async def register(self, enterprise_id: str, **fields: Any) -> dict[str, Any]:
        body = {
            "id": enterprise_id,
            "id_type": "wecom",
            "name": f"{enterprise_id} Ltd",
            "industry": "retail",
            "verified": True,
            **fields,
        }
        result: dict[str, Any] = await self.ok("POST", "/v1/enterprises", body, 201)
        return result

    async def order(
        self,
        enterprise_id: str = ENT_A,
        *,
        sku: str = "pv_1m",
        quantity: int = 1,
        id_type: str = "wecom",
        paid: bool = True,
        paid_at: datetime | None = None,
    ) -> dict[str, Any]:
        """An order created by ops, paid unless ``paid=False``."""
        body = {
            "enterprise_id": enterprise_id,
            "id_type": id_type,
            "sku": sku,
            "quantity": quantity,
            "agreement_accepted": True,
        }
        order: dict[str, Any] = await self.ok("POST", "/v1/orders", body, 201)
        if paid:
            payment: dict[str, Any] = {"reference": f"pay-{order['id']}"}
            if paid_at is not None:
                payment["paid_at"] = paid_at.isoformat()
            order = await self.ok("POST", f"/v1/orders/{order['id']}/pay", payment)
        return order

    async def put_site(self, host: str, enterprise_id: str = ENT_A, **fields: Any) -> Any:
        body = {"enterprise_id": enterprise_id, "origin": DEAD_ORIGIN, **fields}
        return await self.ok("PUT", f"/v1/sites/{host}", body)

    async def balance(self, enterprise_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.ok("GET", f"/v1/enterprises/{enterprise_id}/balance")
        return result

    async def audit(self, enterprise_id: str) -> list[dict[str, Any]]:
        page = await self.ok("GET", f"/v1/audit?enterprise_id={enterprise_id}&limit=1000")
        items: list[dict[str, Any]] = page["items"]
        return items


async def seed(server: AdminServer) -> Seed:
    now = datetime.now(UTC)
    async with server.db.begin() as conn:
        await conn.execute(
            partners.insert(),
            [{"id": p, "name": f"partner {p}", "created_at": now} for p in (PARTNER_A, PARTNER_B)],
        )
    orders = {}
    for ent, partner, id_type in ((ENT_A, PARTNER_A, "wecom"), (ENT_B, PARTNER_B, "qidian")):
        registered = await server.register(ent, id_type=id_type, verified=False, partner_id=partner)
        assert registered["verified"] is False
        patch = {"verified": True, "reason": "real-name verification passed"}
        verified = await server.ok("PATCH", f"/v1/enterprises/{ent}", patch)
        assert verified["verified"] is True
        orders[ent] = await server.order(ent, id_type=id_type)
    gift = await server.ok(
        "POST",
        f"/v1/enterprises/{ENT_A}/gifts",
        {"pv": GIFT_PV, "reason": "welcome gift", "order_id": orders[ENT_A]["id"]},
        201,
    )
    for host, ent in ((SITE_A, ENT_A), (SITE_B, ENT_B)):
        site = await server.put_site(host, ent)
        assert site["status"] == "pending", site
    return Seed(order_a=orders[ENT_A], order_b=orders[ENT_B], gift_a=gift)


@asynccontextmanager
async def running_admin(
    db: Database,
    redis_node: RedisServer,
    settings: BillingSettings | None = None,
    *,
    seeded: bool = True,
) -> AsyncIterator[AdminServer]:
    """`build_app` served on a free loopback port over ``db`` (migrated) and ``redis_node``."""
    redis_node.client().flushall()
    settings = dataclasses.replace(
        settings or BillingSettings(),
        database_url=db.url,
        redis=RedisSettings(url=redis_node.url),
    )
    client = await settings.redis.open()
    app = build_app(settings, db, client)
    runner = AdminRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    session = aiohttp.ClientSession()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}"
        server = AdminServer(
            url=url,
            app=app,
            db=db,
            redis=client,
            settings=settings,
            api=ApiClient(session, url),
            tokens=await make_tokens(db),
        )
        if seeded:
            server.seed = await seed(server)
        yield server
    finally:
        await session.close()
        await runner.cleanup()
        await client.aclose()


AdminFactory = Callable[..., Awaitable[AdminServer]]


async def _admin_factory(db: Database, redis_node: RedisServer) -> AsyncIterator[AdminFactory]:
    servers: list[Any] = []

    async def make(settings: BillingSettings | None = None, **kwargs: Any) -> AdminServer:
        context = running_admin(db, redis_node, settings, **kwargs)
        servers.append(context)
        return await context.__aenter__()

    yield make
    for context in reversed(servers):
        await context.__aexit__(None, None, None)


@pytest.fixture
async def pg_admin(pg_db: Database, redis_node: RedisServer) -> AsyncIterator[AdminServer]:
    """The seeded full admin app on PostgreSQL only (skips, saying why, without a server)."""
    async with running_admin(pg_db, redis_node) as server:
        yield server


@pytest.fixture
async def make_admin(db: Database, redis_node: RedisServer) -> AsyncIterator[AdminFactory]:
    """``await make_admin(BillingSettings(...))``: the seeded app on this test's ledger."""
    async for factory in _admin_factory(db, redis_node):
        yield factory


@pytest.fixture
async def admin(make_admin: AdminFactory) -> AdminServer:
    """The seeded full admin app on SQLite and on PostgreSQL."""
    return await make_admin()


@pytest.fixture
async def make_sqlite_admin(
    sqlite_db: Database, redis_node: RedisServer
) -> AsyncIterator[AdminFactory]:
    """`make_admin` on SQLite only (for what does not depend on the ledger backend)."""
    async for factory in _admin_factory(sqlite_db, redis_node):
        yield factory


@pytest.fixture
async def sqlite_admin(make_sqlite_admin: AdminFactory) -> AdminServer:
    """The seeded full admin app on SQLite only."""
    return await make_sqlite_admin()
