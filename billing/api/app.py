"""The admin API application (docs/architecture.md §6): routes, auth, idempotency, OpenAPI.

``create_admin_app(db, api)`` serves ``api``'s routes plus the built-in ones
(``GET /v1/audit``, ``GET /openapi.json``, ``GET /healthz``).  The caller owns ``db`` (it
migrates and disposes it); the app checks at start-up that its schema is current.  What
else the routes need the caller sets under its own typed `web.AppKey`s on the returned app
(as `billing.service.build_app` sets `billing.api.services.STORE`) before it starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import sqlalchemy as sa
from aiohttp import web

from billing.api import audit_routes
from billing.api.auth import PrincipalCache
from billing.api.context import BILLING_DB, IDEMPOTENCY, PRINCIPALS
from billing.api.edge import api_middleware, json_response
from billing.api.framework import Api
from billing.api.idempotency import IdempotencyStore
from billing.api.openapi import build_openapi
from billing.db import Database

ADMIN_API = web.AppKey("admin_api", Api)
OPENAPI_DOCUMENT = web.AppKey("openapi_document", bytes)

DEFAULT_PORT = 8081
MAX_BODY_BYTES = 1 << 20  # admin requests are small; a megabyte is generous


async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI document; public, like the routes it describes."""
    return json_response(200, request.app[OPENAPI_DOCUMENT])


async def healthz(request: web.Request) -> web.Response:
    """200 when the ledger answers within 2 s, else 503 (for load balancers; no auth)."""
    try:
        async with asyncio.timeout(2):
            await request.app[BILLING_DB].scalar(sa.select(1))
    except Exception:  # any failure means not ready; the reason is for logs, not probes
        return json_response(503, orjson.dumps({"status": "unavailable", "db": "unreachable"}))
    return json_response(200, orjson.dumps({"status": "ok", "db": "ok"}))


def create_admin_app(
    db: Database,
    api: Api,
    *,
    check_schema: bool = True,
    auth_cache_ttl: float = 2.0,
    idempotency_stale_after: float = 60.0,
    client_max_size: int = MAX_BODY_BYTES,
) -> web.Application:
    """The admin aiohttp app serving ``api`` and the built-in routes over ``db``.

    Callers set the state their routes read under typed `web.AppKey`s on the returned app
    and append their long-lived resources to its ``cleanup_ctx``.
    """
    routes = Api()
    routes.include(audit_routes.api)
    routes.include(api)
    app = web.Application(middlewares=[api_middleware], client_max_size=client_max_size)
    app[BILLING_DB] = db
    app[ADMIN_API] = routes
    app[PRINCIPALS] = PrincipalCache(ttl=auth_cache_ttl)
    app[IDEMPOTENCY] = IdempotencyStore(db, stale_after=idempotency_stale_after)
    app[OPENAPI_DOCUMENT] = orjson.dumps(build_openapi(routes))  # a bad model fails here
    if check_schema:
        app.cleanup_ctx.append(_schema_checked)
    app.on_response_prepare.append(_server_header)
    app.router.add_get("/openapi.json", openapi_json, allow_head=False)
    app.router.add_get("/healthz", healthz, allow_head=False)
    routes.install(app)
    return app


SERVER = "pvgate"  # not aiohttp's default, which names its version and Python's


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER


async def _schema_checked(app: web.Application) -> AsyncIterator[None]:
    await app[BILLING_DB].check_schema()  # refuse to serve on an out-of-date ledger
    yield
