"""The WeCom callback endpoint: ``GET/POST /wecom/callback/{enterprise_id}``, without a token.

It is served on the admin port, beside the admin API but outside it: WeCom cannot send a
bearer token, so its only authentication is WeCom's own — the ``msg_signature`` over the
enterprise's token, and a ciphertext that decrypts with its EncodingAESKey to a message
for its corp id (`billing.wecom.crypto`).  Only this path prefix should be exposed to the
internet (docs/architecture.md §6).  In front of everything else, in this order:

1. a rate limit — over all enterprise ids, then per id — answered 429 before any read;
2. a body cap (``[interop] callback_max_body_bytes``, 64 KiB): 413 beyond it;
3. authentication; an unknown enterprise, one without WeCom settings, a wrong signature,
   a signed timestamp more than the de-duplication window (24 h) away from now (a replay),
   a ciphertext that does not decrypt, a message for another corp id all get the same 403,
   so enterprise ids cannot be probed; nothing is stored.

``GET`` (URL verification) answers the decrypted ``echostr`` as text.  ``POST`` stores the
event and takes the relay decision (`billing.wecom.events`) within
``callback_timeout_s`` (3 s, inside WeCom's 5 s), and answers ``success`` — also for a
duplicate or a dropped event, which WeCom must not retry.  Failing that it answers 503, and
WeCom's retry is recognised by the message's key.  Every outcome is counted in
``pvgate_wecom_events_total{result}``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

import sqlalchemy as sa
from aiohttp import web

from billing.api.context import BILLING_DB
from billing.errors import NotFound
from billing.interop.records import WeComSettingsRow
from billing.interop.runtime import INTEROP, InteropRuntime
from billing.ledger import get_enterprise
from billing.rows import EnterpriseRow
from billing.wecom import metrics
from billing.wecom.config import read_settings
from billing.wecom.crypto import CryptoError, check_signature, decrypt
from billing.wecom.events import receive
from billing.wecom.messages import MessageError, envelope_ciphertext, parse_event

log = logging.getLogger("pvgate.billing.wecom")

PATH = "/wecom/callback/{enterprise_id}"
_PARAMS = ("msg_signature", "timestamp", "nonce")


class _Refused(Exception):
    def __init__(self, status: int, result: metrics.Result, text: str) -> None:
        super().__init__(text)
        self.status, self.result, self.text = status, result, text


def _answer(status: int, text: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/plain", headers=headers)


def _limit(runtime: InteropRuntime, enterprise_id: str) -> None:
    now = time.monotonic()
    if not (runtime.overall.take("*", now) and runtime.per_enterprise.take(enterprise_id, now)):
        raise _Refused(429, "rate_limited", "too many callbacks; retry later")


def _params(request: web.Request, names: tuple[str, ...]) -> dict[str, str]:
    values = {name: request.query.get(name, "") for name in names}
    if not all(values.values()) or any(len(v) > 4096 for v in values.values()):
        raise _Refused(400, "malformed", f"expected query parameters {', '.join(names)}")
    return values


async def _body(request: web.Request, cap: int) -> bytes:
    if request.content_length is not None and request.content_length > cap:
        raise _Refused(413, "malformed", f"the body is over {cap} bytes")
    data = await request.content.read(cap + 1)
    while len(data) <= cap and not request.content.at_eof():
        more = await request.content.read(cap + 1 - len(data))
        if not more:
            break
        data += more
    if len(data) > cap:
        raise _Refused(413, "malformed", f"the body is over {cap} bytes")
    return data


@dataclass(frozen=True, slots=True)
class _Caller:
    enterprise: EnterpriseRow
    settings: WeComSettingsRow


async def _caller(request: web.Request, enterprise_id: str) -> _Caller:
    """The enterprise and its settings; the 403 of a bad signature if either is missing."""
    async with request.app[BILLING_DB].engine.connect() as conn:
        try:
            enterprise = await get_enterprise(conn, enterprise_id)
        except NotFound:
            enterprise = None
        settings = await read_settings(conn, enterprise_id) if enterprise else None
    if enterprise is None or settings is None:
        raise _Refused(403, "bad_signature", "the callback does not authenticate")
    return _Caller(enterprise, settings)


def _fresh(timestamp: str, now: datetime, window: timedelta) -> None:
    """A signed timestamp within the de-duplication window of now: a callback recorded and
    sent again later than the window (a replay) would otherwise be a new message."""
    try:
        sent = datetime.fromtimestamp(int(timestamp), UTC)
    except (ValueError, OverflowError, OSError):
        raise CryptoError(f"timestamp {timestamp[:32]!r} is not a Unix time") from None
    if abs(now - sent) > window:
        raise CryptoError(f"timestamp {sent.isoformat()} is outside the window of now")


def _open(
    caller: _Caller, params: dict[str, str], encrypted: str, runtime: InteropRuntime
) -> bytes:
    """The message inside ``encrypted``, if signed and encrypted by this enterprise's keys
    within the window of now."""
    s = caller.settings
    try:
        check_signature(
            s.token, params["timestamp"], params["nonce"], encrypted, params["msg_signature"]
        )
        _fresh(params["timestamp"], runtime.clock.now(), runtime.dedup_window)
        return decrypt(s.encoding_aes_key, encrypted, s.corp_id)
    except CryptoError as exc:
        log.info("WeCom callback for %s refused: %s", caller.enterprise.id, exc)
        raise _Refused(403, "bad_signature", "the callback does not authenticate") from None


async def verify_url(request: web.Request) -> web.Response:
    """WeCom's URL verification: the decrypted ``echostr``."""
    enterprise_id = request.match_info["enterprise_id"]
    try:
        _limit(request.app[INTEROP], enterprise_id)
        params = _params(request, (*_PARAMS, "echostr"))
        caller = await _caller(request, enterprise_id)
        echo = _open(caller, params, params["echostr"], request.app[INTEROP])
    except _Refused as refused:
        metrics.count(refused.result)
        return _answer(refused.status, refused.text)
    return _answer(200, echo.decode("utf-8", errors="replace"))


async def receive_event(request: web.Request) -> web.Response:
    """One event: authenticated, stored, relayed or dropped; ``success`` to WeCom."""
    runtime = request.app[INTEROP]
    enterprise_id = request.match_info["enterprise_id"]
    try:
        _limit(runtime, enterprise_id)
        params = _params(request, _PARAMS)
        body = await _body(request, runtime.section.callback_max_body_bytes)
        try:
            encrypted = envelope_ciphertext(body)
        except MessageError as exc:
            raise _Refused(400, "malformed", str(exc)) from None
        caller = await _caller(request, enterprise_id)
        message = _open(caller, params, encrypted, runtime)
        result = await _store(request, runtime, caller, message)
    except _Refused as refused:
        metrics.count(refused.result)
        if refused.status == 429:
            return _answer(429, refused.text, **{"Retry-After": "1"})
        return _answer(refused.status, refused.text)
    metrics.count(result)
    return _answer(200, "success")


async def _store(
    request: web.Request, runtime: InteropRuntime, caller: _Caller, message: bytes
) -> metrics.Result:
    try:
        event = parse_event(message)
    except MessageError as exc:
        raise _Refused(400, "malformed", f"the decrypted message: {exc}") from None
    try:
        async with asyncio.timeout(runtime.section.callback_timeout_s):
            row = await receive(
                request.app[BILLING_DB],
                caller.enterprise,
                event,
                now=runtime.clock.now(),
                policy=runtime.policy,
                window=runtime.dedup_window,
                relay=runtime.relay,
            )
    except (TimeoutError, OSError, sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        log.warning("WeCom event for %s not stored: %r", caller.enterprise.id, exc)
        raise _Refused(503, "failed", "not stored; retry") from None
    if row.result == "relayed" and runtime.relayed is not None:
        runtime.relayed()  # its delivery is committed: send it now, not at the next poll
    return cast(metrics.Result, row.result)


def install(app: web.Application) -> None:
    """Add the callback's routes to the admin app (`billing.interop.service`)."""
    app.router.add_get(PATH, verify_url, allow_head=False)
    app.router.add_post(PATH, receive_event)
