"""``wecom_robot`` and ``wecom_app``: markdown messages through WeCom's HTTP API.

Both call ``{wecom_base}`` (a setting, so tests run against local servers) and read WeCom's
``{"errcode", "errmsg"}`` reply: 0 is sent; -1 (busy), 45009 (rate limited) and 45033
(too many concurrent calls) are tried again — 45009 not before a minute —; any other code
fails the delivery with WeCom's message kept.

- robot: ``POST /cgi-bin/webhook/send?key=KEY`` ``{"msgtype": "markdown", …}``.  The limit
  of 20 messages a minute per robot is kept by the worker's claim (`billing.alerts.claims`).
- app: ``GET /cgi-bin/gettoken?corpid=&corpsecret=`` gives an access token, cached per app
  until its ``expires_in`` and shared by every delivery (one fetch at a time per app);
  ``POST /cgi-bin/message/send?access_token=`` ``{"touser": "a|b", "agentid", "msgtype":
  "markdown", …}``.  On 40014, 42001 or 40001 (invalid or expired token) the token is
  fetched again, once, and the message sent again.  Users WeCom reports invalid
  (``invaliduser``) are recorded with the attempt.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import orjson

from billing.alerts.channels.base import Job, Outcome, Renderer, excerpt
from billing.alerts.retry import parse_retry_after
from billing.outbound import OutboundClient, OutboundError, OutboundRefused, OutboundResponse

TRANSIENT = frozenset({-1, 45009, 45033})
TOKEN_INVALID = frozenset({40014, 42001, 40001})
RATE_LIMITED = 45009


@dataclass(frozen=True, slots=True)
class Reply:
    errcode: int
    errmsg: str
    body: dict[str, object]


def parse_reply(resp: OutboundResponse) -> Reply | None:
    try:
        body = orjson.loads(resp.body)
        return Reply(int(body["errcode"]), str(body.get("errmsg", "")), body)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def judge(resp: OutboundResponse, now: datetime) -> Outcome:
    """A WeCom reply to a send as an outcome."""
    text = excerpt(resp.text())
    if not 200 <= resp.status < 300:
        after = parse_retry_after(resp.headers.get("Retry-After"), now)
        return Outcome(
            result="retry", status_code=resp.status, response=text, error=f"HTTP {resp.status}",
            retry_after=after,
        )  # fmt: skip
    reply = parse_reply(resp)
    if reply is None:
        return Outcome(
            result="retry", status_code=resp.status, response=text, error="not a WeCom reply"
        )
    if reply.errcode == 0:
        invalid = [
            f"{k}: {reply.body[k]}"
            for k in ("invaliduser", "invalidparty", "invalidtag")
            if reply.body.get(k)
        ]
        return Outcome(
            result="sent", status_code=resp.status, response=text, error="; ".join(invalid)
        )
    error = f"errcode {reply.errcode}: {reply.errmsg}"
    if reply.errcode in TRANSIENT:
        wait = 60.0 if reply.errcode == RATE_LIMITED else None
        return Outcome(
            result="retry", status_code=resp.status, response=text, error=error, retry_after=wait
        )
    return Outcome(result="failed", status_code=resp.status, response=text, error=error)


def _markdown(content: str) -> dict[str, object]:
    return {"msgtype": "markdown", "markdown": {"content": content}}


class RobotChannel:
    type = "wecom_robot"

    def __init__(self, client: OutboundClient, base: str, renderer: Renderer) -> None:
        self.client, self.base, self.renderer = client, base.rstrip("/"), renderer

    async def send(self, job: Job, now: datetime) -> Outcome:
        assert job.channel is not None
        body = orjson.dumps(_markdown(self.renderer.markdown(job.event)))
        try:
            resp = await self.client.request(
                "POST",
                f"{self.base}/cgi-bin/webhook/send",
                params={"key": job.channel.secret},
                body=body,
                headers={"Content-Type": "application/json"},
            )
        except OutboundRefused as exc:
            return Outcome(result="failed", error=f"refused: {exc.message}")
        except OutboundError as exc:
            return Outcome(result="retry", error=exc.message)
        return judge(resp, now)


class TokenError(Exception):
    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.error)
        self.outcome = outcome


class TokenCache:
    """Access tokens per app (corp id + secret), fetched once and shared until they expire."""

    def __init__(
        self, client: OutboundClient, base: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.client, self.base, self.clock = client, base.rstrip("/"), clock
        self._tokens: dict[str, tuple[str, float]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.fetches = 0

    @staticmethod
    def _key(corp_id: str, secret: str) -> str:
        return hashlib.sha256(f"{corp_id}\0{secret}".encode()).hexdigest()

    async def get(self, corp_id: str, secret: str) -> str:
        key = self._key(corp_id, secret)
        async with self._locks.setdefault(key, asyncio.Lock()):
            cached = self._tokens.get(key)
            if cached is not None and cached[1] > self.clock():
                return cached[0]
            token, expires_in = await self._fetch(corp_id, secret)
            # A little early, so that a token never expires between check and use.
            self._tokens[key] = (
                token,
                self.clock() + max(0.0, expires_in - min(60.0, expires_in / 10)),
            )
            return token

    def invalidate(self, corp_id: str, secret: str, token: str) -> None:
        key = self._key(corp_id, secret)
        if self._tokens.get(key, ("", 0.0))[0] == token:
            del self._tokens[key]

    async def _fetch(self, corp_id: str, secret: str) -> tuple[str, float]:
        self.fetches += 1
        try:
            resp = await self.client.request(
                "GET",
                f"{self.base}/cgi-bin/gettoken",
                params={"corpid": corp_id, "corpsecret": secret},
            )
        except OutboundRefused as exc:
            raise TokenError(
                Outcome(result="failed", error=f"gettoken refused: {exc.message}")
            ) from exc
        except OutboundError as exc:
            raise TokenError(Outcome(result="retry", error=f"gettoken: {exc.message}")) from exc
        reply = parse_reply(resp)
        if reply is None or resp.status != 200:
            raise TokenError(
                Outcome(result="retry", status_code=resp.status, error="gettoken: no WeCom reply")
            )
        if reply.errcode != 0 or not isinstance(reply.body.get("access_token"), str):
            error = f"gettoken errcode {reply.errcode}: {reply.errmsg}"
            if reply.errcode in TRANSIENT:
                raise TokenError(Outcome(result="retry", status_code=resp.status, error=error))
            raise TokenError(Outcome(result="failed", status_code=resp.status, error=error))
        expires = reply.body.get("expires_in")
        lifetime = float(expires) if isinstance(expires, int | float) else 7200.0
        return str(reply.body["access_token"]), lifetime


class AppChannel:
    type = "wecom_app"

    def __init__(
        self, client: OutboundClient, base: str, renderer: Renderer, tokens: TokenCache
    ) -> None:
        self.client, self.base, self.renderer, self.tokens = (
            client,
            base.rstrip("/"),
            renderer,
            tokens,
        )

    async def send(self, job: Job, now: datetime) -> Outcome:
        channel = job.channel
        assert channel is not None
        corp_id = str(channel.config["corp_id"])
        message = {
            "touser": "|".join(str(u) for u in channel.config["to_users"]),
            "agentid": channel.config["agent_id"],
            **_markdown(self.renderer.markdown(job.event)),
        }
        body = orjson.dumps(message)
        try:
            token = await self.tokens.get(corp_id, channel.secret)
            resp = await self._post(token, body)
            reply = parse_reply(resp) if resp.status == 200 else None
            if reply is not None and reply.errcode in TOKEN_INVALID:
                self.tokens.invalidate(corp_id, channel.secret, token)
                token = await self.tokens.get(corp_id, channel.secret)
                resp = await self._post(token, body)
        except TokenError as exc:
            return exc.outcome
        except OutboundRefused as exc:
            return Outcome(result="failed", error=f"refused: {exc.message}")
        except OutboundError as exc:
            return Outcome(result="retry", error=exc.message)
        return judge(resp, now)

    async def _post(self, token: str, body: bytes) -> OutboundResponse:
        return await self.client.request(
            "POST",
            f"{self.base}/cgi-bin/message/send",
            params={"access_token": token},
            body=body,
            headers={"Content-Type": "application/json"},
        )
