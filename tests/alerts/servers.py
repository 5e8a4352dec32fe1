"""Real HTTP servers on loopback for the alert tests: a webhook receiver and WeCom.

`Receiver` verifies each request with ``standardwebhooks.Webhook.verify`` against every
secret it knows and answers from a script (default 200); it can hold requests until told
to answer.  `WeCom` speaks the robot API (``/cgi-bin/webhook/send``) and the app API
(``/cgi-bin/gettoken``, ``/cgi-bin/message/send``) with scripted errcodes.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from pvgate.embedded import free_port


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    verified_by: tuple[str, ...]  # the secrets whose verify() accepted it

    @property
    def event_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def payload(self) -> Any:
        return orjson.loads(self.body)


class Server:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> Server:
        app = web.Application()
        self.routes(app)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, self.host, self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


class Receiver(Server):
    """A webhook receiver: ``POST /hook``, verified, answered from ``script``."""

    def __init__(self, secrets: list[str] | None = None, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self.secrets: list[str] = list(secrets or [])
        self.script: deque[Answer] = deque()
        self.received: list[Received] = []
        self.hold: asyncio.Event | None = None  # while set to an unset event, requests wait
        self.arrived = asyncio.Event()

    @property
    def hook(self) -> str:
        return f"{self.url}/hook"

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self._handle)

    def verify(self, headers: dict[str, str], body: bytes) -> tuple[str, ...]:
        ok = []
        for secret in self.secrets:
            try:
                Webhook(secret).verify(body, headers)
            except WebhookVerificationError:
                continue
            ok.append(secret)
        return tuple(ok)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        self.received.append(Received(headers, body, self.verify(headers, body)))
        self.arrived.set()
        if self.hold is not None:
            await self.hold.wait()
        answer = self.script.popleft() if self.script else Answer()
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)

    async def wait_for(self, n: int, within: float = 10.0) -> list[Received]:
        async with asyncio.timeout(within):
            while len(self.received) < n:
                self.arrived.clear()
                await self.arrived.wait()
        return self.received


class WeCom(Server):
    """WeCom's robot and app APIs, errcodes scripted per endpoint."""

    def __init__(self) -> None:
        super().__init__()
        self.robot_script: deque[dict[str, Any]] = deque()
        self.robot_messages: list[tuple[str, dict[str, Any]]] = []  # (key, body)
        self.app_script: deque[dict[str, Any]] = deque()
        self.app_messages: list[tuple[str, dict[str, Any]]] = []  # (token, body)
        self.token_requests: list[tuple[str, str]] = []  # (corpid, corpsecret)
        self.valid_tokens: set[str] = set()
        self._tokens = itertools.count(1)
        self.expires_in = 7200
        self.gettoken_reply: dict[str, Any] | None = None  # an error instead of a token

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/cgi-bin/webhook/send", self._robot)
        app.router.add_get("/cgi-bin/gettoken", self._gettoken)
        app.router.add_post("/cgi-bin/message/send", self._app_send)

    async def _robot(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.robot_messages.append((request.query.get("key", ""), body))
        reply = self.robot_script.popleft() if self.robot_script else {"errcode": 0}
        return web.json_response({"errmsg": "ok", **reply})

    async def _gettoken(self, request: web.Request) -> web.Response:
        self.token_requests.append(
            (request.query.get("corpid", ""), request.query.get("corpsecret", ""))
        )
        if self.gettoken_reply is not None:
            return web.json_response(self.gettoken_reply)
        token = f"token-{next(self._tokens)}"
        self.valid_tokens.add(token)
        return web.json_response(
            {"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": self.expires_in}
        )

    async def _app_send(self, request: web.Request) -> web.Response:
        token = request.query.get("access_token", "")
        body = orjson.loads(await request.read())
        self.app_messages.append((token, body))
        if token not in self.valid_tokens:
            return web.json_response({"errcode": 42001, "errmsg": "access_token expired"})
        reply = self.app_script.popleft() if self.app_script else {"errcode": 0}
        return web.json_response({"errmsg": "ok", **reply})
