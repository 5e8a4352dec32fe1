"""The HTTP edge of the admin API: JSON responses, error translation, request ids.

Every response leaves through `api_middleware`, so every one carries ``X-Request-Id`` and
every error is ``{"error": {"code", "message"}}`` — unknown routes, wrong methods, and bugs
included; aiohttp's HTML error pages never reach a client (nor, served by
`billing.api.server.AdminRunner`, its HTTP parser's plain-text ones).  Foreign exceptions are
translated here: a SQL constraint violation is a 409, an unreachable database a 503, and
anything else a logged 500 whose message names the request id.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping

import orjson
from aiohttp import web
from sqlalchemy import exc as sa_exc

from billing.api.errors import (
    InternalError,
    MethodNotAllowed,
    PayloadTooLarge,
    StoreConflict,
    Unauthorized,
    Unavailable,
)
from billing.errors import BillingError, NotFound, ValidationFailed

log = logging.getLogger("pvgate.billing.api")

REQUEST_ID = web.RequestKey("request_id", str)
REQUEST_ID_HEADER = "X-Request-Id"
JSON = "application/json"

# Accepted from clients as is: it ends up in logs and in audit_log.request_id (64 chars).
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(
    status: int, body: bytes, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A response whose body is already-serialized JSON."""
    return web.Response(status=status, body=body, content_type=JSON, headers=headers)


def error_body(code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}})


def error_response(error: BillingError) -> web.Response:
    """The JSON rendering of a billing error, with the status its class declares."""
    headers: dict[str, str] = {}
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="pvgate"'
    elif isinstance(error, Unavailable):
        headers["Retry-After"] = "1"
    return json_response(error.http_status, error_body(error.code, error.message), headers)


def translate(exc: Exception, request_id: str) -> BillingError:
    """Any exception as the BillingError a client is told about; bugs are logged here."""
    if isinstance(exc, BillingError):
        if exc.http_status >= 500:
            log.error("request %s failed: %s (%s)", request_id, exc.message, exc.code)
        return exc
    if isinstance(exc, sa_exc.IntegrityError):
        # Routes check what they can first; this is the race they cannot see.
        log.info("request %s: constraint refused a write: %s", request_id, exc.orig)
        return StoreConflict()
    if _sqlstate(exc).startswith("22"):
        # A data exception (SQLSTATE class 22): a value the database cannot store, such
        # as a NUL character in PostgreSQL text.  The client's input, not a bug.
        log.info("request %s: value refused by the database: %s", request_id, exc)
        return ValidationFailed("body", "a value cannot be stored (invalid characters?)")
    if isinstance(exc, OverflowError):
        return ValidationFailed("body", "a date or number is out of range")
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | OSError | TimeoutError):
        log.warning("request %s: ledger database unavailable: %r", request_id, exc)
        return Unavailable()
    log.error("request %s: unhandled exception", request_id, exc_info=exc)
    return InternalError(f"internal error; quote request id {request_id} when reporting it")


def _sqlstate(exc: Exception) -> str:
    if not isinstance(exc, sa_exc.DBAPIError):
        return ""
    orig = exc.orig
    # asyncpg keeps it on the driver's exception, under the adapter's wrapper.
    for candidate in (orig, getattr(orig, "__cause__", None)):
        state = getattr(candidate, "sqlstate", None)
        if isinstance(state, str):
            return state
    return ""


def request_id_of(request: web.Request) -> str:
    """The caller's ``X-Request-Id`` when it is sane, else a fresh one."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if _SANE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def _from_http_exception(exc: web.HTTPException, request: web.Request) -> web.Response:
    if isinstance(exc, web.HTTPNotFound):
        return error_response(NotFound(f"no route {request.method} {request.path}"))
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        response = error_response(
            MethodNotAllowed(f"{request.method} is not allowed on {request.path}; use {allowed}")
        )
        response.headers["Allow"] = allowed
        return response
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return error_response(PayloadTooLarge())
    code = (exc.reason or "http_error").lower().replace(" ", "_")
    headers = {
        k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")
    }
    return json_response(exc.status, error_body(code, exc.reason or "error"), headers)


@web.middleware
async def api_middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Request id in, JSON errors and ``X-Request-Id`` out, for every route."""
    request_id = request_id_of(request)
    request[REQUEST_ID] = request_id
    response: web.StreamResponse
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # the router's 404/405, aiohttp's own refusals
        response = _from_http_exception(exc, request)
    except Exception as exc:
        response = error_response(translate(exc, request_id))
    response.headers[REQUEST_ID_HEADER] = request_id
    return response
