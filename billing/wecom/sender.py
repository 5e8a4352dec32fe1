"""``pvgate wecom-send``: play WeCom once against a running billing (the demo) and watch the relay.

It starts a local receiver, points the enterprise's WeCom settings at it (fresh token and
EncodingAESKey, a new relay secret), gives the member an interop account if it has none,
then sends one ``change_external_contact`` event the way WeCom does — encrypted with the
EncodingAESKey, signed with the token — to ``/wecom/callback/{enterprise}``, prints WeCom's
answer, and waits for the relayed delivery, whose Standard Webhooks signature it checks.

The billing it talks to must let outbound calls reach the receiver (``[alerts] allow_http``
and ``allow_addresses`` for loopback), as a demo does.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import string
import sys
import time
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from standardwebhooks import Webhook

from billing.wecom.crypto import encrypt, signature

_ALNUM = string.ascii_letters + string.digits
CORP_ID = "wwpvgatedemo00001"


def _random(n: int) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(n))


def event_xml(corp_id: str, userid: str) -> bytes:
    now = int(time.time())
    return (
        f"<xml><ToUserName><![CDATA[{corp_id}]]></ToUserName>"
        f"<FromUserName><![CDATA[sys]]></FromUserName><CreateTime>{now}</CreateTime>"
        "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[change_external_contact]]></Event>"
        "<ChangeType><![CDATA[add_external_contact]]></ChangeType>"
        f"<UserID><![CDATA[{userid}]]></UserID>"
        f"<ExternalUserID><![CDATA[wmDemo{now}]]></ExternalUserID>"
        "<State><![CDATA[pvgate-demo]]></State><WelcomeCode><![CDATA[demo]]></WelcomeCode></xml>"
    ).encode()


async def _admin(
    session: aiohttp.ClientSession, method: str, url: str, token: str, body: Any
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with session.request(method, url, data=orjson.dumps(body), headers=headers) as resp:
        return resp.status, orjson.loads(await resp.read() or b"null")


async def _receiver(listen: str) -> tuple[web.AppRunner, str, asyncio.Queue[web.Request]]:
    arrived: asyncio.Queue[web.Request] = asyncio.Queue()

    async def take(request: web.Request) -> web.Response:
        await request.read()
        await arrived.put(request)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/wecom-relay", take)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, _, port = listen.rpartition(":")
    site = web.TCPSite(runner, host, int(port))
    await site.start()
    bound = runner.addresses[0]
    return runner, f"http://{host}:{bound[1]}/wecom-relay", arrived


async def _configure(
    session: aiohttp.ClientSession, args: argparse.Namespace, relay_url: str
) -> tuple[dict[str, str], str]:
    keys = {"token": _random(16), "encoding_aes_key": _random(43), "corp_id": CORP_ID}
    base = f"{args.admin.rstrip('/')}/v1/enterprises/{args.enterprise}"
    body = {**keys, "relay_url": relay_url, "rotate_relay_secret": True}
    status, shown = await _admin(session, "PUT", f"{base}/wecom", args.token, body)
    if status != 200:
        raise SystemExit(f"PUT …/wecom answered {status}: {shown}")
    status, member = await _admin(
        session, "POST", f"{base}/interop/members", args.token, {"userid": args.userid}
    )
    if status not in (201, 409):
        raise SystemExit(f"assigning {args.userid} answered {status}: {member}")
    return keys, str(shown["relay_secret"])


async def _send(
    session: aiohttp.ClientSession, args: argparse.Namespace, keys: dict[str, str]
) -> None:
    message = event_xml(keys["corp_id"], args.userid)
    encrypted = encrypt(keys["encoding_aes_key"], message, keys["corp_id"])
    timestamp, nonce = str(int(time.time())), _random(10)
    params = {
        "msg_signature": signature(keys["token"], timestamp, nonce, encrypted),
        "timestamp": timestamp,
        "nonce": nonce,
    }
    envelope = (
        f"<xml><ToUserName><![CDATA[{keys['corp_id']}]]></ToUserName>"
        f"<Encrypt><![CDATA[{encrypted}]]></Encrypt><AgentID><![CDATA[1]]></AgentID></xml>"
    )
    url = f"{args.admin.rstrip('/')}/wecom/callback/{args.enterprise}"
    print(f"WeCom → POST {url}\n  event: {message.decode()}")
    async with session.post(url, params=params, data=envelope.encode()) as resp:
        print(f"  pvgate answered WeCom: {resp.status} {await resp.text()!r}")


async def send_once(args: argparse.Namespace) -> int:
    runner, relay_url, arrived = await _receiver(args.listen)
    try:
        async with aiohttp.ClientSession() as session:
            keys, secret = await _configure(session, args, relay_url)
            print(f"receiver listening at {relay_url}; relay secret {secret}")
            await _send(session, args, keys)
        try:
            request = await asyncio.wait_for(arrived.get(), args.wait)
        except TimeoutError:
            print(f"nothing reached the receiver within {args.wait:g} s", file=sys.stderr)
            return 1
        body = await request.read()
        payload = Webhook(secret).verify(body, dict(request.headers))
        print("receiver ← POST", request.path)
        for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
            print(f"  {name}: {request.headers[name]}")
        print("  signature verified with the relay secret (standardwebhooks)")
        print(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode())
        return 0
    finally:
        await runner.cleanup()


def run_wecom_send(args: argparse.Namespace) -> int:
    return asyncio.run(send_once(args))
