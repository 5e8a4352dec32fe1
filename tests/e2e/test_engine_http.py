"""HTTP/1.1 as the engine speaks it, on both sides: what a proxy must get right.

HEAD, 204 and 304 without bodies; interim 1xx dropped; bodies without a length (chunked,
or read until the origin closes) re-chunked for HTTP/1.1 and close-delimited for 1.0;
HTTP/1.0 keep-alive; pipelining in order; ``Expect: 100-continue`` answered by the
gateway; large bodies streamed both ways; a pooled connection the origin closed retried
once for an idempotent request only; the ``Server`` header; websockets tunnelled and
never charged; graceful shutdown.  The origins are real servers on loopback: aiohttp for
the ordinary ones, raw asyncio ones where an origin must misbehave on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from metering import BalanceStore
from pvgate.embedded import free_port
from tests.conftest import single_client
from tests.e2e.harness import HTML_HEADERS, redis_config, sample
from tests.e2e.rawhttp import exchange
from tests.helpers import package

H = b"Host: shop.test\r\n"
BIG = 5 * 1024 * 1024


async def head_or_get(request: web.Request) -> web.StreamResponse:
    return web.Response(body=b"x" * 4096, content_type="text/html")


async def no_content(request: web.Request) -> web.StreamResponse:
    return web.Response(status=204)


async def not_modified(request: web.Request) -> web.StreamResponse:
    return web.Response(status=304, headers={"ETag": '"v1"'})


async def chunked(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    for i in range(5):
        await response.write(b"part %d;" % i)
    await response.write_eof()
    return response


async def upload(request: web.Request) -> web.StreamResponse:
    digest, size = hashlib.sha256(), 0
    async for piece in request.content.iter_any():
        digest.update(piece)
        size += len(piece)
    return web.json_response({"size": size, "sha256": digest.hexdigest()})


async def big(request: web.Request) -> web.StreamResponse:
    return web.Response(body=bytes(range(256)) * (BIG // 256), content_type="text/plain")


async def slow(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(1.5)
    return web.Response(text="slow but sure")


async def server_name(request: web.Request) -> web.StreamResponse:
    return web.Response(text="named", headers={"Server": "origin-server/1"})


async def socket(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        await ws.send_str(f"echo {message.data}")
    return ws


async def origin_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/doc", head_or_get)
    app.router.add_get("/204", no_content)
    app.router.add_get("/304", not_modified)
    app.router.add_get("/chunked", chunked)
    app.router.add_post("/upload", upload)
    app.router.add_get("/big", big)
    app.router.add_get("/slow", slow)
    app.router.add_get("/named", server_name)
    app.router.add_get("/ws", socket)
    return app


@pytest.fixture
async def aio_origin() -> AsyncIterator[str]:
    runner = web.AppRunner(await origin_app(), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_origin(handler: Handler) -> AsyncIterator[str]:
    """An origin written byte by byte: ``handler(reader, writer, connection number)``."""
    count = 0
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        count += 1
        writers.append(writer)
        with contextlib.suppress(ConnectionError):
            await handler(reader, writer, count)
        writer.close()

    port = free_port()
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def gateway_for(gateways, redis_node, origin: str, **settings):
    site = {"host": "shop.test", "enterprise_id": "ent-h", "origin": origin, "status": "approved"}
    return gateways({"redis": redis_config(redis_node), "site": [site], **settings})


@pytest.fixture
async def store(redis_node) -> AsyncIterator[BalanceStore]:
    redis_node.client().flushall()
    client = single_client(redis_node)
    store = BalanceStore(client)
    await store.credit("ent-h", package("p", 1000))
    yield store
    await client.aclose()


async def used(store: BalanceStore) -> int:
    return (await store.snapshot("ent-h")).buckets[0].used


async def test_responses_without_a_body_keep_the_connection(
    redis_node, gateways, aio_origin, store
):
    gw = gateway_for(gateways, redis_node, aio_origin)
    await gw.wait_ready()
    raw = (
        b"GET /204 HTTP/1.1\r\n" + H + b"\r\n"
        + b"GET /304 HTTP/1.1\r\n" + H + b'If-None-Match: "v1"\r\n\r\n'
        + b"GET /doc HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"
    )  # fmt: skip
    reply = await exchange(gw.port, [raw])
    assert [r.status for r in reply.responses()] == [204, 304, 200], reply.data[:600]
    assert reply.responses()[2].body == b"x" * 4096
    # HEAD: the length a GET would have, no body, and the next response right after it.
    head = b"HEAD /doc HTTP/1.1\r\n" + H + b"\r\n"
    reply = await exchange(
        gw.port, [head + b"GET /204 HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"]
    )
    first, _, second = reply.data.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200 ")
    assert b"Content-Length: 4096" in first
    assert second.startswith(b"HTTP/1.1 204 "), reply.data[:300]


async def test_bodies_without_a_length_are_rechunked_or_close_delimited(
    redis_node, gateways, store
):
    async def until_close(reader, writer, n):
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nread me until close")
        await writer.drain()

    async with raw_origin(until_close) as origin:
        gw = gateway_for(gateways, redis_node, origin)
        await gw.wait_ready()
        get = b"GET /u HTTP/1.1\r\n" + H + b"\r\n"
        reply = await exchange(
            gw.port, [get + b"GET /u HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"]
        )
        first, second = reply.responses()
        assert first.header(b"Transfer-Encoding") == b"chunked"  # and the connection lived on
        assert first.body == second.body == b"read me until close"
        old = await exchange(gw.port, [b"GET /u HTTP/1.0\r\n" + H + b"\r\n"])
        assert old.closed
        (response,) = old.responses()
        assert response.header(b"Transfer-Encoding") is None
        assert response.body == b"read me until close"


async def test_interim_responses_are_dropped_and_chunked_bodies_pass(
    redis_node, gateways, aio_origin, store
):
    async def early_hints(reader, writer, n):
        await read_head(reader)
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal")
        await writer.drain()
        await reader.read()

    async with raw_origin(early_hints) as origin:
        gw = gateway_for(gateways, redis_node, origin)
        await gw.wait_ready()
        reply = await exchange(gw.port, [b"GET /e HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"])
        assert reply.statuses == [200]
        assert reply.responses()[0].body == b"final"
    gw2 = gateway_for(gateways, redis_node, aio_origin)
    await gw2.wait_ready()
    reply = await exchange(
        gw2.port, [b"GET /chunked HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"]
    )
    (response,) = reply.responses()
    assert response.header(b"Transfer-Encoding") == b"chunked"
    assert response.body == b"".join(b"part %d;" % i for i in range(5))


async def test_http_1_0_keep_alive_and_pipelining_in_order(redis_node, gateways, aio_origin, store):
    gw = gateway_for(gateways, redis_node, aio_origin)
    await gw.wait_ready()
    ten = b"GET /doc HTTP/1.0\r\n" + H + b"Connection: keep-alive\r\n\r\n"
    reply = await exchange(gw.port, [ten * 2 + b"GET /named HTTP/1.0\r\n" + H + b"\r\n"])
    responses = reply.responses()
    assert [r.status for r in responses] == [200, 200, 200]
    assert [r.header(b"Connection") for r in responses[:2]] == [b"keep-alive", b"keep-alive"]
    assert responses[2].body == b"named"
    assert reply.closed  # the last one did not ask for keep-alive


async def test_expect_100_continue_is_answered_by_the_gateway(
    redis_node, gateways, aio_origin, store
):
    gw = gateway_for(gateways, redis_node, aio_origin)
    await gw.wait_ready()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    body = b"y" * 100_000
    writer.write(
        b"POST /upload HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n" % len(body)
        + b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
    )  # fmt: skip
    await writer.drain()
    async with asyncio.timeout(5):
        interim = await reader.readuntil(b"\r\n\r\n")
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(body)
    await writer.drain()
    async with asyncio.timeout(5):
        answer = await reader.read()
    writer.close()
    assert b" 200 " in answer.split(b"\r\n")[0]
    assert hashlib.sha256(body).hexdigest().encode() in answer


async def test_large_bodies_stream_both_ways(redis_node, gateways, aio_origin, store):
    gw = gateway_for(gateways, redis_node, aio_origin)
    await gw.wait_ready()
    payload = bytes(range(256)) * (BIG // 256)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gw.url}/big", headers={"Host": "shop.test"}) as resp:
            assert await resp.read() == payload
        async with session.post(
            f"{gw.url}/upload", headers={"Host": "shop.test"}, data=io.BytesIO(payload)
        ) as resp:
            assert await resp.json() == {"size": BIG, "sha256": hashlib.sha256(payload).hexdigest()}

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, BIG, 65536):
                yield payload[start : start + 65536]

        async with session.post(
            f"{gw.url}/upload", headers={"Host": "shop.test"}, data=chunks()
        ) as resp:  # chunked, with no length
            assert await resp.json() == {"size": BIG, "sha256": hashlib.sha256(payload).hexdigest()}


async def test_a_pooled_connection_the_origin_closed_is_retried_for_idempotent_only(
    redis_node, gateways, store
):
    async def one_answer_per_connection(reader, writer, n):
        head = await read_head(reader)
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await read_head(reader)  # the next request on this connection: closed unanswered

    async with raw_origin(one_answer_per_connection) as origin:
        gw = gateway_for(gateways, redis_node, origin, upstream={"pool_size_per_host": 1})
        await gw.wait_ready()
        get = b"GET /r HTTP/1.1\r\n" + H + b"\r\n"
        reply = await exchange(
            gw.port, [get, get + b"GET /r HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"], gap=0.2
        )
        assert reply.statuses == [200, 200, 200]  # each second use of a connection retried
        reply = await exchange(gw.port, [get])  # warm a pooled connection again
        post = b"POST /r HTTP/1.1\r\n" + H + b"Content-Length: 2\r\nConnection: close\r\n\r\nhi"
        reply = await exchange(gw.port, [post])
        assert reply.statuses == [502]  # a POST is never sent twice


async def test_an_origin_that_goes_silent_times_out_each_time_it_stops_sending(
    redis_node, gateways, store
):
    """``read_timeout_ms`` bounds each silence of the origin, not the whole response: a
    body that keeps coming is relayed however long it takes; one that stops mid-way is
    cut off (the response has started, so the visitor's connection is dropped) and its
    PV given back; an origin that never answers gets 504.  The timeout is lowered (from
    30 s) only so that the test does not wait that long."""

    async def origin_handler(reader, writer, n):
        while True:
            head = await read_head(reader)
            if b"/silent" in head:
                await reader.read()  # never answers
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
            for _ in range(4):  # 0.2 s between bytes, 0.8 s in all: more than the timeout
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.2)
            if b"/stall" in head:
                await reader.read()  # 4 of 10 bytes, then nothing
                return
            writer.write(b"y" * 6)
            await writer.drain()

    async with raw_origin(origin_handler) as origin:
        gw = gateway_for(gateways, redis_node, origin, upstream={"read_timeout_ms": 500})
        await gw.wait_ready()
        doc = b"Accept: text/html\r\nSec-Fetch-Dest: document\r\nConnection: close\r\n\r\n"
        slow = await exchange(gw.port, [b"GET /trickle HTTP/1.1\r\n" + H + doc])
        assert slow.responses()[0].body == b"xxxxyyyyyy"
        started = time.monotonic()
        stalled = await exchange(gw.port, [b"GET /stall HTTP/1.1\r\n" + H + doc])
        assert stalled.closed
        assert stalled.data.startswith(b"HTTP/1.1 200 ")
        assert len(stalled.data.partition(b"\r\n\r\n")[2]) == 4  # cut off, not completed
        assert 1.0 <= time.monotonic() - started < 3.5  # 0.8 s of bytes, then 0.5 s silent
        silent = await exchange(gw.port, [b"GET /silent HTTP/1.1\r\n" + H + doc])
        assert silent.statuses == [504]
    assert await used(store) == 1  # only the page that was delivered whole


async def test_an_idle_pooled_connection_is_closed_after_keepalive(redis_node, gateways, store):
    """The pool closes an origin connection idle for ``keepalive_s`` (lowered from 30 s so
    the test need not wait), and one in use is not closed however long it has lived."""
    closed_at: list[float] = []

    async def origin_handler(reader, writer, n):
        while True:
            try:
                await read_head(reader)
            except asyncio.IncompleteReadError:
                closed_at.append(time.monotonic())
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async with raw_origin(origin_handler) as origin:
        gw = gateway_for(gateways, redis_node, origin, upstream={"keepalive_s": 0.6})
        await gw.wait_ready()
        get = b"GET /k HTTP/1.1\r\n" + H + b"\r\n"
        # Seven requests 0.2 s apart on one pooled connection: 1.2 s, twice the idle time.
        last_get = b"GET /k HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"
        reply = await exchange(gw.port, [get] * 6 + [last_get], gap=0.2)
        last = time.monotonic()
        assert reply.statuses == [200] * 7
        assert closed_at == []  # never idle long enough
        for _ in range(40):
            if closed_at:
                break
            await asyncio.sleep(0.05)
        assert closed_at, "the idle connection was not closed"
        assert 0.3 < closed_at[0] - last < 1.6


async def test_server_header_of_the_gateway_and_of_the_origin(
    redis_node, gateways, aio_origin, store
):
    gw = gateway_for(gateways, redis_node, aio_origin)
    quiet = gateway_for(gateways, redis_node, aio_origin, server_header="")
    await gw.wait_ready()
    await quiet.wait_ready()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gw.url}/", headers={"Host": "nowhere.test"}) as resp:
            assert resp.status == 404
            assert resp.headers["Server"] == "pvgate"  # no versions
        async with session.get(f"{quiet.url}/", headers={"Host": "nowhere.test"}) as resp:
            assert "Server" not in resp.headers
        async with session.get(f"{gw.url}/named", headers={"Host": "shop.test"}) as resp:
            assert resp.headers["Server"] == "origin-server/1"


async def test_websockets_are_tunnelled_and_never_charged(redis_node, gateways, aio_origin, store):
    gw = gateway_for(gateways, redis_node, aio_origin)
    await gw.wait_ready()
    before = await used(store)
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{gw.url}/ws", headers={"Host": "shop.test", **HTML_HEADERS}) as ws,
    ):
        for i in range(20):
            await ws.send_str(f"m{i}")
            assert (await ws.receive_str()) == f"echo m{i}"
    assert await used(store) == before
    metrics = await gw.metrics()
    assert sample(metrics, "pvgate_requests_total", outcome="served") == 0
    assert sample(metrics, "pvgate_requests_total", outcome="not_counted") == 1


async def test_shutdown_finishes_requests_in_flight_and_refuses_new_ones(
    redis_node, gateways, aio_origin, store
):
    gw = gateway_for(gateways, redis_node, aio_origin)
    await gw.wait_ready()
    async with aiohttp.ClientSession() as session:
        idle = await asyncio.open_connection("127.0.0.1", gw.port)  # keep-alive, idle
        slow = asyncio.create_task(session.get(f"{gw.url}/slow", headers={"Host": "shop.test"}))
        await asyncio.sleep(0.3)
        gw.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        resp = await slow
        assert resp.status == 200
        assert await resp.text() == "slow but sure"
        resp.release()
        async with asyncio.timeout(5):
            assert await idle[0].read() == b""  # the idle connection was closed
        idle[1].close()
        assert gw.process.wait(15) == 0
        assert time.monotonic() - started < 12
