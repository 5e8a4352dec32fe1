"""Stand-ins for the other parties of the WeCom relay, on real loopback HTTP servers.

- `FakeWeCom` plays WeCom: ``POST /send`` and ``POST /verify`` make it encrypt and sign a
  message or an ``echostr`` the way WeCom does — implemented here, independently of
  `billing.wecom.crypto`, with the `cryptography` package — and call pvgate's callback URL,
  answering what pvgate answered.
- `Receiver` is the customer's endpoint: it records every request (headers and body).
- `ManualClock` is the clock interop reads, moved by hand to stand at an expiry instant.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from pvgate.embedded import free_port

# WeCom's documented sample (企业微信 加解密方案说明): token, EncodingAESKey, corp id.
SAMPLE_TOKEN = "QDG6eK"
SAMPLE_AES_KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
SAMPLE_CORP_ID = "wx5823bf96d3bd56c7"


@dataclass
class ManualClock:
    at: datetime

    def now(self) -> datetime:
        return self.at

    def set(self, at: datetime) -> None:
        self.at = at

    def advance(self, **delta: float) -> None:
        self.at += timedelta(**delta)


def wecom_encrypt(aes_key: str, message: bytes, corp_id: str, random: bytes | None = None) -> str:
    """WeCom's encryption: AES-256-CBC, IV = key[:16], PKCS#7 padding to 32-byte blocks."""
    key = base64.b64decode(aes_key + "=")
    plain = (random or os.urandom(16)) + struct.pack(">I", len(message)) + message
    plain += corp_id.encode()
    pad = 32 - len(plain) % 32
    plain += bytes([pad]) * pad
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode()


def _flip_padding(encrypted: str) -> str:
    """Flip a bit of the next-to-last block: the last plaintext block's padding breaks."""
    raw = bytearray(base64.b64decode(encrypted))
    raw[-17] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def wecom_sign(token: str, timestamp: str, nonce: str, encrypted: str) -> str:
    return hashlib.sha1("".join(sorted([token, timestamp, nonce, encrypted])).encode()).hexdigest()


def event_xml(
    event: str = "change_external_contact",
    change_type: str = "add_external_contact",
    *,
    userid: str | None = "alice",
    corp_id: str = SAMPLE_CORP_ID,
    create_time: int = 1_700_000_000,
    extra: str = "",
) -> bytes:
    """A WeCom event callback's plaintext XML."""
    member = f"<UserID><![CDATA[{userid}]]></UserID>" if userid else ""
    return (
        f"<xml><ToUserName><![CDATA[{corp_id}]]></ToUserName>"
        f"<FromUserName><![CDATA[sys]]></FromUserName><CreateTime>{create_time}</CreateTime>"
        f"<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[{event}]]></Event>"
        f"<ChangeType><![CDATA[{change_type}]]></ChangeType>{member}{extra}</xml>"
    ).encode()


@dataclass
class Keys:
    token: str = SAMPLE_TOKEN
    aes_key: str = SAMPLE_AES_KEY
    corp_id: str = SAMPLE_CORP_ID


@dataclass
class FakeWeCom:
    """WeCom, calling pvgate at ``callback_base`` + ``/wecom/callback/{enterprise}``."""

    callback_base: str
    session: aiohttp.ClientSession
    url: str = ""
    clock: Callable[[], datetime] | None = None  # timestamps are its time (default: now)

    async def _call(
        self, method: str, url: str, params: dict[str, str], body: bytes | None
    ) -> tuple[int, str]:
        async with self.session.request(method, url, params=params, data=body) as resp:
            return resp.status, await resp.text()

    def params(self, keys: Keys, encrypted: str, **override: str) -> dict[str, str]:
        now = self.clock() if self.clock else datetime.now(UTC)
        timestamp = override.pop("timestamp", str(int(now.timestamp())))
        nonce = override.pop("nonce", "8848")
        signed = wecom_sign(keys.token, timestamp, nonce, encrypted)
        return {"msg_signature": signed, "timestamp": timestamp, "nonce": nonce, **override}

    async def handle_send(self, request: web.Request) -> web.Response:
        """``{"enterprise_id", "xml", "keys": {...}, "tamper": mode, "sign_with": token}``.

        ``tamper``: ``"in_transit"`` alters the ciphertext after it was signed;
        ``"resigned"`` alters it and signs the result (who has the token, not the key).
        """
        spec: dict[str, Any] = await request.json()
        keys = Keys(**spec.get("keys", {}))
        signer = Keys(token=spec.get("sign_with", keys.token))
        encrypted = wecom_encrypt(keys.aes_key, spec["xml"].encode(), keys.corp_id)
        stamp = {"timestamp": str(spec["timestamp"])} if "timestamp" in spec else {}
        params = self.params(signer, encrypted, **stamp)
        if spec.get("tamper"):
            encrypted = _flip_padding(encrypted)
            if spec["tamper"] == "resigned":
                params = self.params(signer, encrypted, **stamp)
        body = (
            f"<xml><ToUserName><![CDATA[{keys.corp_id}]]></ToUserName>"
            f"<Encrypt><![CDATA[{encrypted}]]></Encrypt><AgentID><![CDATA[1]]></AgentID></xml>"
        ).encode()
        url = f"{self.callback_base}/wecom/callback/{spec['enterprise_id']}"
        status, text = await self._call("POST", url, params, body)
        return web.json_response({"status": status, "text": text})

    async def handle_verify(self, request: web.Request) -> web.Response:
        spec: dict[str, Any] = await request.json()
        keys = Keys(**spec.get("keys", {}))
        echostr = wecom_encrypt(keys.aes_key, spec["echo"].encode(), keys.corp_id)
        params = self.params(
            Keys(token=spec.get("sign_with", keys.token)), echostr, echostr=echostr
        )
        url = f"{self.callback_base}/wecom/callback/{spec['enterprise_id']}"
        status, text = await self._call("GET", url, params, None)
        return web.json_response({"status": status, "text": text})

    async def send(self, enterprise_id: str, xml: bytes, **spec: Any) -> tuple[int, str]:
        """Ask the stand-in to deliver ``xml`` to pvgate; pvgate's (status, text)."""
        body = {"enterprise_id": enterprise_id, "xml": xml.decode(), **spec}
        async with self.session.post(f"{self.url}/send", json=body) as resp:
            answer = await resp.json()
        return int(answer["status"]), str(answer["text"])

    async def verify(self, enterprise_id: str, echo: str, **spec: Any) -> tuple[int, str]:
        body = {"enterprise_id": enterprise_id, "echo": echo, **spec}
        async with self.session.post(f"{self.url}/verify", json=body) as resp:
            answer = await resp.json()
        return int(answer["status"]), str(answer["text"])


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """The customer's endpoint: 200 to everything (or ``status``), each request recorded."""

    url: str = ""
    status: int = 200
    requests: list[Received] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(Received(dict(request.headers), await request.read()))
        return web.Response(status=self.status, text="ok")


@asynccontextmanager
async def _serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def fake_wecom(callback_base: str) -> AsyncIterator[FakeWeCom]:
    async with aiohttp.ClientSession() as session:
        wecom = FakeWeCom(callback_base, session)
        app = web.Application()
        app.router.add_post("/send", wecom.handle_send)
        app.router.add_post("/verify", wecom.handle_verify)
        async with _serve(app) as url:
            wecom.url = url
            yield wecom


@asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", found.handle)
    async with _serve(app) as url:
        found.url = url
        yield found
