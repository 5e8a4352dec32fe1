"""Requests the HTTP parser refuses get JSON 4xx like every other error, logged at info.

Raw bytes over a socket to the real admin server (`AdminRunner`, as ``pvgate billing``
serves it): a raw non-ASCII byte or a control byte in the path, a 10 KB header line, a
10 KB request line, garbage or TLS instead of HTTP, a broken chunked body, a body whose
Content-Encoding does not decode.  Each answer is ``{"error": {"code", "message"}}`` with
``Content-Type: application/json``, an ``X-Request-Id`` and the right status; nothing is
logged at error level, and the server goes on serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from urllib.parse import urlsplit

import orjson
import pytest

from billing.api.server import HEADER_LINE_MAX, REQUEST_LINE_MAX, AdminRunner
from billing.db import Database
from billing.service import start_billing
from billing.settings import BillingSettings
from metering.connection import RedisSettings
from pvgate.embedded import RedisServer, free_port
from tests.admin_api.conftest import ENT_A, AdminServer, expect
from tests.conftest import single_client

PAD = b"a" * 10_240


async def exchange(server: AdminServer, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` as is; the status, headers (lowercased names) and body of the answer."""
    url = urlsplit(server.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(data)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
        headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines)}
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 5)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return int(status_line.split()[1]), headers, body


MALFORMED = [
    pytest.param(b"GET /v1/enterprises/caf\xe9 HTTP/1.1\r\nHost: a\r\n\r\n",
                 400, "malformed_request", id="non-ascii-byte-in-path"),
    pytest.param(b"GET /v1/enterprises/a\x01b HTTP/1.1\r\nHost: a\r\n\r\n",
                 400, "malformed_request", id="control-byte-in-path"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Padding: " + PAD + b"\r\n\r\n",
                 431, "header_too_large", id="10kb-header-line"),
    pytest.param(b"GET /v1/audit?limit=" + PAD + b" HTTP/1.1\r\nHost: a\r\n\r\n",
                 414, "uri_too_long", id="10kb-request-line"),
    pytest.param(b"\x00\x01 garbage\r\n\r\n", 400, "malformed_request", id="garbage-request-line"),
    pytest.param(b"HELLO\r\n\r\n", 400, "malformed_request", id="no-http-version"),
    pytest.param(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 40,
                 400, "malformed_request", id="tls-on-the-http-port"),
    pytest.param(b"POST /v1/quotes HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                 400, "malformed_request", id="broken-chunk-size"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "status", "code"), MALFORMED)
async def test_what_the_parser_refuses_is_a_json_4xx_logged_at_info(
    sqlite_admin: AdminServer,
    caplog: pytest.LogCaptureFixture,
    data: bytes,
    status: int,
    code: str,
):
    caplog.set_level(logging.INFO)
    answered, headers, raw = await exchange(sqlite_admin, data)
    assert (answered, headers["content-type"]) == (status, "application/json"), raw
    body = orjson.loads(raw)
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    request_id = headers["x-request-id"]
    assert headers["server"] == "pvgate"  # no versions of aiohttp and Python
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    refused = [r for r in caplog.records if r.name == "pvgate.billing.api"]
    assert [r.levelno for r in refused] == [logging.INFO], refused
    assert request_id in refused[0].getMessage()
    assert refused[0].exc_info is None
    # The server goes on: a well-formed request right after is served.
    assert expect(await sqlite_admin.api.call("GET", "/healthz", None), 200) == {
        "status": "ok",
        "db": "ok",
    }


async def test_the_limits_tell_the_request_line_from_a_header(sqlite_admin: AdminServer):
    """Just under each limit is served; one byte over it is refused with its own status."""
    query = b"GET /healthz?" + b"a" * 100 + b" HTTP/1.1\r\nHost: a\r\n"
    fits = b"X-Padding: " + b"a" * (HEADER_LINE_MAX - 11) + b"\r\n"
    answered, headers, _ = await exchange(sqlite_admin, query + fits + b"Connection: close\r\n\r\n")
    assert answered == 200  # past the parser: /healthz answers
    assert headers["server"] == "pvgate"
    over = b"X-Padding: " + b"a" * (HEADER_LINE_MAX + 1) + b"\r\n\r\n"
    assert (await exchange(sqlite_admin, query + over))[0] == 431
    long_path = b"GET /" + b"a" * (REQUEST_LINE_MAX + 1) + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    assert (await exchange(sqlite_admin, long_path))[0] == 414


async def test_a_body_that_does_not_decode_is_a_400_not_a_500(
    sqlite_admin: AdminServer, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO)
    before = expect(await sqlite_admin.ops("GET", f"/v1/audit?enterprise_id={ENT_A}"), 200)
    request = (
        b"POST /v1/enterprises/" + ENT_A.encode() + b"/gifts HTTP/1.1\r\nHost: a\r\n"
        b"Authorization: Bearer " + sqlite_admin.tokens.ops.encode() + b"\r\n"
        b"Idempotency-Key: gzip-1\r\nContent-Type: application/json\r\n"
        b"Content-Encoding: gzip\r\nContent-Length: 18\r\n\r\n{not gzip at all!}"
    )
    answered, headers, raw = await exchange(sqlite_admin, request)
    assert (answered, headers["content-type"]) == (400, "application/json"), raw
    assert orjson.loads(raw)["error"]["code"] == "malformed_request"
    await asyncio.sleep(0.1)  # the protocol drains the rest of the body after answering
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    after = expect(await sqlite_admin.ops("GET", f"/v1/audit?enterprise_id={ENT_A}"), 200)
    assert after == before


async def test_pvgate_billing_serves_through_the_admin_runner(
    sqlite_db: Database, redis_node: RedisServer
):
    """`start_billing` — what ``pvgate billing`` runs — answers parser refusals in JSON too."""
    port = free_port()
    settings = BillingSettings(
        listen=f"127.0.0.1:{port}",
        metrics_listen=f"127.0.0.1:{free_port()}",
        database_url=sqlite_db.url,
        redis=RedisSettings(url=redis_node.url),
    )
    client = single_client(redis_node)
    runners = await start_billing(settings, sqlite_db, client)
    try:
        assert isinstance(runners[0], AdminRunner)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /caf\xe9 HTTP/1.1\r\nHost: a\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)  # refused: the connection closes
        writer.close()
    finally:
        for runner in runners:
            await runner.cleanup()
        await client.aclose()
    head, _, raw = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 400 ")
    assert b"\r\nContent-Type: application/json\r\n" in head
    assert orjson.loads(raw)["error"]["code"] == "malformed_request"
