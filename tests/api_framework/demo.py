"""Demo routes declared with the framework, as business modules will declare theirs.

Each handler counts its calls in ``ctx.app[CALLS]``, so a test can tell a replayed
response from a re-run; ``/v1/slow`` waits at ``ctx.app[GATE]``.
"""

from __future__ import annotations

import asyncio
import enum
from collections import Counter
from dataclasses import dataclass, field

import sqlalchemy as sa
from aiohttp import web
from pydantic import Field, StrictInt

from billing.api.auth import fetch_visible_enterprise
from billing.api.context import RequestContext
from billing.api.framework import Api, ApiModel, Id, ParamInt, Text
from billing.errors import Conflict, NotFound
from billing.schema import enterprises

api = Api()


@dataclass
class Gate:
    """Holds the slow route inside its handler until a test lets it go."""

    entered: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)


CALLS = web.AppKey("demo_calls", Counter[str])
GATE = web.AppKey("demo_gate", Gate)


class Color(enum.StrEnum):
    RED = "red"
    BLUE = "blue"


class EchoIn(ApiModel):
    name: Text = Field(max_length=50)
    count: StrictInt
    tags: list[Text] = Field(default_factory=list)


class EchoOut(ApiModel):
    name: str
    count: int
    tags: list[str]
    role: str


class Thing(ApiModel):
    id: int
    label: str


class SearchQuery(ApiModel):
    q: Text
    limit: ParamInt = Field(default=10, ge=1, le=50)
    tag: list[Text] = Field(default_factory=list)
    color: set[Color] | None = None


class SearchOut(ApiModel):
    q: str
    limit: int
    tag: list[str]
    color: list[Color] | None


class NoteIn(ApiModel):
    text: Text = Field(max_length=200)
    reason: Text = Field(default="", max_length=500)


class NoteOut(ApiModel):
    enterprise_id: str
    text: str


class Ok(ApiModel):
    ok: bool = True


def _count(ctx: RequestContext, name: str) -> int:
    calls = ctx.app[CALLS]
    calls[name] += 1
    return calls[name]


@api.route(
    "POST",
    "/v1/echo",
    summary="Echo a body",
    request_model=EchoIn,
    response_model=EchoOut,
    status=201,
)
async def echo(ctx: RequestContext, body: EchoIn) -> EchoOut:
    """Returns what it was sent, and who sent it."""
    _count(ctx, "echo")
    return EchoOut(name=body.name, count=body.count, tags=body.tags, role=ctx.principal.role)


@api.route("GET", "/v1/things/{thing_id}", summary="Read a thing", response_model=Thing)
async def get_thing(ctx: RequestContext, body: None, thing_id: ParamInt) -> Thing:
    if thing_id > 100:
        raise NotFound(f"thing {thing_id} not found")
    return Thing(id=thing_id, label=f"thing {thing_id}")


@api.route(
    "DELETE", "/v1/things/{thing_id}", summary="Forget a thing", response_model=None, roles=("ops",)
)
async def delete_thing(ctx: RequestContext, body: None, thing_id: ParamInt) -> None:
    _count(ctx, "delete")


@api.route("GET", "/v1/search", summary="Search", query_model=SearchQuery, response_model=SearchOut)
async def search(ctx: RequestContext, body: None, query: SearchQuery) -> SearchOut:
    color = None if query.color is None else sorted(query.color)
    return SearchOut(q=query.q, limit=query.limit, tag=query.tag, color=color)


@api.route(
    "POST",
    "/v1/enterprises/{enterprise_id}/notes",
    summary="Add a note",
    request_model=NoteIn,
    response_model=NoteOut,
    status=201,
    audit_action="note.add",
)
async def add_note(ctx: RequestContext, body: NoteIn, enterprise_id: Id) -> NoteOut:
    """Audited write inside the scope check; text "fail" rolls everything back with a 409."""
    _count(ctx, "note")
    async with ctx.db.begin() as conn:
        before = await fetch_visible_enterprise(conn, ctx.principal, enterprise_id)
        await conn.execute(
            sa.update(enterprises).where(enterprises.c.id == enterprise_id).values(industry="x")
        )
        await ctx.audit(
            conn,
            enterprise_id=enterprise_id,
            before={"industry": before.industry},
            after={"industry": "x", "note": body.text},
            reason=body.reason,
        )
        if body.text == "fail":
            raise Conflict("notes saying 'fail' fail")
    return NoteOut(enterprise_id=enterprise_id, text=body.text)


@api.route("POST", "/v1/ops-only", summary="Ops only", response_model=Ok, roles=("ops",))
async def ops_only(ctx: RequestContext, body: None) -> Ok:
    return Ok()


@api.route(
    "POST", "/v1/flaky", summary="Fails on its first call", request_model=EchoIn, response_model=Ok
)
async def flaky(ctx: RequestContext, body: EchoIn) -> Ok:
    if _count(ctx, "flaky") == 1:
        raise RuntimeError("first call fails")
    return Ok()


@api.route(
    "POST",
    "/v1/slow",
    summary="Waits for the test",
    request_model=EchoIn,
    response_model=EchoOut,
    status=201,
)
async def slow(ctx: RequestContext, body: EchoIn) -> EchoOut:
    _count(ctx, "slow")
    gate = ctx.app[GATE]
    gate.entered.set()
    await gate.release.wait()
    return EchoOut(name=body.name, count=body.count, tags=body.tags, role=ctx.principal.role)


@api.route("GET", "/v1/boom", summary="A bug", response_model=Ok)
async def boom(ctx: RequestContext, body: None) -> Ok:
    raise RuntimeError("secret internal detail")


@api.route("GET", "/v1/wrong-type", summary="Returns the wrong model", response_model=Ok)
async def wrong_type(ctx: RequestContext, body: None) -> Thing:
    return Thing(id=1, label="not an Ok")


@api.route("POST", "/v1/accepted", summary="Answers 202 by tuple", response_model=Ok)
async def accepted(ctx: RequestContext, body: None) -> tuple[int, Ok]:
    _count(ctx, "accepted")
    return 202, Ok()


@api.route(
    "POST",
    "/v1/forgetful",
    summary="Forgets its audit row",
    response_model=Ok,
    audit_action="forget",
)
async def forgetful(ctx: RequestContext, body: None) -> Ok:
    return Ok()
