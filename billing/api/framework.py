"""Declarative routes for the admin API: aiohttp underneath, pydantic models on top.

A route is declared once and everything else follows from the declaration — validation,
auth, role check, idempotency, error rendering and its OpenAPI description::

    api = Api()

    @api.route("POST", "/v1/enterprises/{enterprise_id}/gifts", summary="Grant gift PV",
               request_model=GiftIn, response_model=GiftOut, status=201,
               roles=("ops",), audit_action="gift.grant")
    async def grant_gift(ctx: RequestContext, body: GiftIn, enterprise_id: Id) -> GiftOut:
        async with ctx.db.begin() as conn:
            ...
            await ctx.audit(conn, enterprise_id=enterprise_id, after=row)
        return GiftOut(...)

Per request, in order: authenticate (401), role allowed for the route (403), path and query
parameters (400), ``Idempotency-Key`` (400), body (400), idempotency claim (replay / 409),
handler.  A handler returns its response model (status from the route), a ``(status,
model)`` tuple, or None for a route with ``response_model=None`` (204); it raises
`billing.errors` classes for refusals.  Path parameters arrive as keyword arguments typed
by the handler's annotations; with a ``query_model`` the validated query arrives as
``query=``.  Request fields are strict (`billing.api.fields`): a model with a plain ``int``,
``bool`` or ``str`` field fails the declaration.
"""

from __future__ import annotations

import inspect
import logging
import re
import typing
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, create_model

from billing.api.auth import KINDS, Kind, Principal, authenticate, bearer_token
from billing.api.context import BILLING_DB, IDEMPOTENCY, PRINCIPALS, RequestContext
from billing.api.edge import REQUEST_ID, error_response, json_response, translate
from billing.api.errors import Forbidden, Unauthorized
from billing.api.fields import BucketId as BucketId
from billing.api.fields import Id as Id
from billing.api.fields import ParamBool as ParamBool
from billing.api.fields import ParamInt as ParamInt
from billing.api.fields import QueryTime as QueryTime
from billing.api.fields import Text as Text
from billing.api.fields import Timestamp as Timestamp
from billing.api.fields import check_strict
from billing.api.idempotency import KEY_HEADER, REPLAYED_HEADER, request_hash, validate_key
from billing.api.parsing import read_body, validated_body, validated_path, validated_query

log = logging.getLogger("pvgate.billing.api")

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
ALL_ROLES: tuple[Kind, ...] = KINDS

Handler = Callable[..., Awaitable[Any]]
H = TypeVar("H", bound=Handler)

_PATH_PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")


class ApiModel(BaseModel):
    """Base for request, query and response models: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    response_model: type[BaseModel] | None
    request_model: type[BaseModel] | None
    query_model: type[BaseModel] | None
    path_model: type[BaseModel]
    status: int
    roles: tuple[Kind, ...]
    audit_action: str | None

    @property
    def name(self) -> str:
        return self.handler.__name__

    @property
    def description(self) -> str:
        return inspect.getdoc(self.handler) or ""

    @property
    def path_params(self) -> list[str]:
        return _PATH_PARAM.findall(self.path)


class Api:
    """A set of routes; modules declare theirs on their own `Api` and the app `include`s them."""

    def __init__(self) -> None:
        self._routes: list[Route] = []

    @property
    def routes(self) -> tuple[Route, ...]:
        return tuple(self._routes)

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        response_model: type[BaseModel] | None,
        request_model: type[BaseModel] | None = None,
        status: int = 200,
        query_model: type[BaseModel] | None = None,
        roles: Sequence[Kind] = ALL_ROLES,
        audit_action: str | None = None,
    ) -> Callable[[H], H]:
        """Register ``handler`` for ``method path``; bad declarations fail at import time."""

        def register(handler: H) -> H:
            _check_declaration(method, path, handler, request_model, query_model, roles)
            path_model = _path_model(path, handler)
            check_strict(f"route {method} {path}", request_model, query_model, path_model)
            self._add(
                Route(
                    method=method,
                    path=path,
                    handler=handler,
                    summary=summary,
                    response_model=response_model,
                    request_model=request_model,
                    query_model=query_model,
                    path_model=path_model,
                    status=status,
                    roles=tuple(roles),
                    audit_action=audit_action,
                )
            )
            return handler

        return register

    def include(self, other: Api) -> None:
        """Add another Api's routes (a route already here is skipped, not doubled)."""
        for route in other.routes:
            if route not in self._routes:
                self._add(route)

    def install(self, app: web.Application) -> None:
        """Add every route to ``app``'s router."""
        for route in self._routes:
            app.router.add_route(route.method, route.path, _endpoint(route))

    def _add(self, route: Route) -> None:
        for known in self._routes:
            if (known.method, known.path) == (route.method, route.path):
                raise ValueError(f"route {route.method} {route.path} is declared twice")
            if known.name == route.name:
                raise ValueError(f"two handlers named {route.name!r}: names are operation ids")
        self._routes.append(route)


def _check_declaration(
    method: str,
    path: str,
    handler: Handler,
    request_model: type[BaseModel] | None,
    query_model: type[BaseModel] | None,
    roles: Sequence[Kind],
) -> None:
    where = f"route {method} {path}"
    if method not in METHODS:
        raise ValueError(f"{where}: method must be one of {', '.join(METHODS)}")
    if not path.startswith("/"):
        raise ValueError(f"{where}: path must start with '/'")
    if not roles or not set(roles) <= set(KINDS):
        raise ValueError(f"{where}: roles must be a non-empty subset of {KINDS}")
    if not inspect.iscoroutinefunction(handler):
        raise TypeError(f"{where}: the handler must be an async def")
    for model in (request_model, query_model):
        if model is not None and model.model_config.get("extra") != "forbid":
            raise TypeError(f"{where}: {model.__name__} must refuse extra fields (ApiModel)")
    if "query" in inspect.signature(handler).parameters and query_model is None:
        raise TypeError(f"{where}: the handler takes query= but the route has no query_model")


def _path_model(path: str, handler: Handler) -> type[BaseModel]:
    """A model of the path parameters, typed by the handler's annotations (default str)."""
    try:
        hints = typing.get_type_hints(handler, include_extras=True)
    except NameError as exc:
        raise TypeError(f"{handler.__name__}: annotations must resolve ({exc})") from exc
    params = inspect.signature(handler).parameters
    fields: dict[str, Any] = {}
    for name in _PATH_PARAM.findall(path):
        if name in ("ctx", "body", "query"):
            raise TypeError(f"{handler.__name__}: path parameter {name!r} shadows an argument")
        if name not in params:
            raise TypeError(f"{handler.__name__} has no parameter for path parameter {name!r}")
        fields[name] = (hints.get(name, str), ...)
    return create_model(f"{handler.__name__}_path", __config__=ConfigDict(extra="forbid"), **fields)


def _endpoint(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def endpoint(request: web.Request) -> web.StreamResponse:
        principal = await _authenticate(request)
        if principal.kind not in route.roles:
            raise Forbidden(f"a {principal.kind} token may not use {route.method} {route.path}")
        kwargs = validated_path(route.path_model, route.path_params, request)
        query = validated_query(route.query_model, request)
        if query is not None:
            kwargs["query"] = query
        key = validate_key(request.headers.get(KEY_HEADER)) if route.method == "POST" else None
        raw = await read_body(request)
        body = validated_body(route.request_model, request, raw)
        ctx = RequestContext(
            principal=principal,
            request_id=request[REQUEST_ID],
            db=request.app[BILLING_DB],
            app=request.app,
            request=request,
            idempotency_key=key,
            audit_action=route.audit_action,
        )
        if key is None:
            return await _run(route, ctx, body, kwargs)
        return await _run_once(route, ctx, key, raw, body, kwargs)

    return endpoint


async def _authenticate(request: web.Request) -> Principal:
    token = bearer_token(request.headers.get("Authorization"))
    if token is None:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    app = request.app
    principal = await authenticate(app[BILLING_DB], token, app[PRINCIPALS])
    if principal is None:
        raise Unauthorized("invalid or revoked token")
    return principal


async def _run(
    route: Route, ctx: RequestContext, body: BaseModel | None, kwargs: dict[str, Any]
) -> web.Response:
    """Call the handler; its refusals and failures become JSON error responses."""
    try:
        result = await route.handler(ctx, body, **kwargs)
        response = _render(route, result)
    except Exception as exc:
        return error_response(translate(exc, ctx.request_id))
    if route.audit_action and ctx.audit_rows == 0 and response.status < 300:
        log.error("%s %s wrote no audit row (request %s)", route.method, route.path, ctx.request_id)
    return response


def _render(route: Route, result: Any) -> web.Response:
    status = route.status
    if isinstance(result, tuple):
        status, result = result
    if route.response_model is None:
        if result is not None:
            raise TypeError(f"{route.name} returned {type(result).__name__} for a 204 route")
        return web.Response(status=204 if status == 200 else status)
    if not isinstance(result, route.response_model):
        raise TypeError(
            f"{route.name} returned {type(result).__name__}, not {route.response_model.__name__}"
        )
    return json_response(status, result.model_dump_json().encode())


async def _run_once(
    route: Route,
    ctx: RequestContext,
    key: str,
    raw: bytes,
    body: BaseModel | None,
    kwargs: dict[str, Any],
) -> web.Response:
    """`_run` under an idempotency claim: replay, refuse, or run and remember."""
    store = ctx.app[IDEMPOTENCY]
    actor = ctx.principal.role  # keys are per tenant: a rotated token still replays
    request = ctx.request
    fingerprint = request_hash(request.method, request.path, list(request.query.items()), raw)
    stored = await store.begin(actor, key, fingerprint)
    if stored is not None:
        headers = {REPLAYED_HEADER: "true"}
        if stored.status == 204:
            return web.Response(status=204, headers=headers)
        return json_response(stored.status, stored.body, headers)
    try:
        response = await _run(route, ctx, body, kwargs)
    except BaseException:
        await store.release(actor, key)
        raise
    stored_body = response.body if isinstance(response.body, bytes) else b""
    try:
        await store.finish(actor, key, response.status, stored_body)
    except Exception as exc:  # the change is made; the client must still hear of it
        log.error("request %s: could not store idempotent response", ctx.request_id, exc_info=exc)
    return response
