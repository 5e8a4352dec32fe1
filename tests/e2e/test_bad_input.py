"""Malformed and hostile requests, sent as raw bytes to a real gateway process.

Each must end in a 4xx or a closed connection: never a crash, never a request (or a
smuggled second request) reaching the origin, never a page view charged.  One gateway on
the single Redis node serves the whole module; every test checks afterwards that the
gateway still serves a good page view, charged exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web

from metering import BalanceStore
from pvgate.embedded import RedisServer
from tests.conftest import single_client
from tests.e2e.harness import (
    HTML_HEADERS,
    Gateway,
    Origin,
    redis_config,
    sample,
    site,
    start_gateway,
)
from tests.helpers import package

pytestmark = pytest.mark.asyncio(loop_scope="module")

ENTERPRISE = "ent-bad"
MAX_BODY = 1000
MAX_LINE = 1024
MAX_HEADERS = 20
HEADER_TIMEOUT = 1.0
LIMITS = {
    "header_timeout_s": HEADER_TIMEOUT,
    "max_body_bytes": MAX_BODY,
    "max_header_line": MAX_LINE,
    "max_headers": MAX_HEADERS,
}
# Every exchange must be over (answered and closed) within this; keep-alive closes at 1 s.
BOUND = 4.0

# The headers of a browser's document request: were any of these requests served, it
# would be a page view and charged.
DOC = b"".join(f"{k}: {v}\r\n".encode() for k, v in HTML_HEADERS.items())
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: shop.test\r\n" + DOC + b"\r\n"
GOOD = b"GET /ok HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n" + DOC + b"\r\n"
BIG = b"x" * (MAX_BODY * 5)


def get(target: bytes = b"/", *headers: bytes, version: bytes = b"HTTP/1.1") -> bytes:
    """A document GET with Host: shop.test unless ``headers`` bring their own Host."""
    lines = b"".join(h + b"\r\n" for h in headers)
    host = b"" if any(h.lower().startswith(b"host") for h in headers) else b"Host: shop.test\r\n"
    return b"GET " + target + b" " + version + b"\r\n" + host + lines + DOC + b"\r\n"


def post(path: bytes, *headers: bytes, body: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    lines = b"".join(h + b"\r\n" for h in headers)
    return b"POST " + path + b" " + version + b"\r\nHost: shop.test\r\n" + lines + b"\r\n" + body


@dataclass
class SinkOrigin(Origin):
    """The harness origin, plus ``/sink``: records the size of every body received whole."""

    received: list[int] = field(default_factory=list)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path != "/sink":
            return await super()._handle(request)
        self.hits[request.path] += 1
        try:
            body = await request.read()
        except Exception:  # the gateway gave up mid-body: received, but not whole
            return web.Response(status=400)
        self.received.append(len(body))
        return web.Response(text="ok")


@dataclass
class Env:
    gw: Gateway
    origin: SinkOrigin
    store: BalanceStore


@dataclass
class Reply:
    data: bytes
    closed: bool  # the gateway closed the connection within the bound
    elapsed: float

    @property
    def statuses(self) -> list[int]:
        """The status of every response in the bytes received, in order."""
        found: list[int] = []
        rest = self.data
        while rest:
            head, sep, rest = rest.partition(b"\r\n\r\n")
            if not sep:
                break
            lines = head.split(b"\r\n")
            found.append(int(lines[0].split()[1]))
            lengths = [
                int(line.partition(b":")[2])
                for line in lines[1:]
                if line.lower().startswith(b"content-length:")
            ]
            if not lengths:
                break  # a body up to the close
            rest = rest[lengths[0] :]
        return found


@dataclass
class Before:
    used: int
    hits: Counter[str]
    received: list[int]
    metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float]
    log_errors: int

    def count(self, outcome: str) -> float:
        return sample(self.metrics, "pvgate_requests_total", outcome=outcome)


async def exchange(port: int, pieces: list[bytes], *, gap: float = 0.0) -> Reply:
    """Send ``pieces`` (``gap`` seconds apart), read until the gateway closes (or BOUND)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()

    async def feed() -> None:
        for i, piece in enumerate(pieces):
            if i and gap:
                await asyncio.sleep(gap)
            try:
                writer.write(piece)
                await writer.drain()
            except ConnectionError:
                return  # the gateway closed on us: that is an answer too

    feeding = asyncio.create_task(feed())
    data, closed = b"", False
    try:
        async with asyncio.timeout(BOUND):
            while chunk := await reader.read(65536):
                data += chunk
            closed = True
    except TimeoutError:
        pass
    except ConnectionResetError:
        closed = True
    elapsed = time.monotonic() - started
    feeding.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await feeding
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    return Reply(data, closed, elapsed)


async def used(env: Env) -> int:
    return sum(b.used for b in (await env.store.snapshot(ENTERPRISE)).buckets)


def log_errors(gw: Gateway) -> list[str]:
    """Error lines the gateway logged: an unhandled exception, a worker that died."""
    text = gw.log.read_text() if gw.log.exists() else ""
    return [line for line in text.splitlines() if '"level":"error"' in line or "Traceback" in line]


async def observe(env: Env) -> Before:
    return Before(
        used=await used(env),
        hits=Counter(env.origin.hits),
        received=list(env.origin.received),
        metrics=await env.gw.metrics(),
        log_errors=len(log_errors(env.gw)),
    )


async def assert_unharmed(
    env: Env, before: Before, *, origin_hit: Counter[str] | None = None
) -> None:
    """Nothing charged, nothing reached the origin, no crash; a good page view still works."""
    gw, origin = env.gw, env.origin
    assert gw.process.poll() is None, f"gateway exited: {gw.log_text()}"
    assert log_errors(gw)[before.log_errors :] == []
    assert origin.hits == before.hits + (origin_hit or Counter())
    assert origin.received == before.received  # no body was delivered whole
    assert await used(env) == before.used
    good = await exchange(gw.port, [GOOD])
    assert good.statuses == [200], good.data[:300]
    assert origin.hits["/ok"] == before.hits["/ok"] + 1
    assert await used(env) == before.used + 1  # the good view, and only it, is charged


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(
    redis_node: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Env]:
    redis_node.client().flushall()
    client = single_client(redis_node)
    origin = SinkOrigin()
    await origin.start()
    tmp: Path = tmp_path_factory.mktemp("bad-input")
    settings = {
        "redis": redis_config(redis_node),
        "site": [site(origin, ENTERPRISE)],
        "limits": LIMITS,
    }
    gw = start_gateway(tmp, settings)
    try:
        store = BalanceStore(client)
        await store.credit(ENTERPRISE, package("p", 100))
        await gw.wait_ready()
        yield Env(gw, origin, store)
    finally:
        gw.stop()
        await origin.stop()
        await client.aclose()


BAD = "bad_request"
# (raw request, acceptable statuses, outcome counted in pvgate_requests_total or None)
RAW_CASES = [
    pytest.param(b"GARBAGE\r\n\r\n", {400}, None, id="garbage-request-line"),
    pytest.param(
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(32)) + b"\r\n\r\n",
        {400},
        None,
        id="tls-client-hello",
    ),
    pytest.param(get(version=b"HTTP/9.9"), {400, 505}, BAD, id="bad-http-version"),
    pytest.param(get(version=b"HTTX/1.1"), {400}, BAD, id="bad-protocol-name"),
    pytest.param(get(b"/", b"NoColonHere"), {400}, BAD, id="header-without-colon"),
    pytest.param(get(b"/", b"X-A: a\x00b"), {400}, BAD, id="header-with-nul"),
    pytest.param(get(b"/", b"X-A: a\x01b"), {400}, BAD, id="header-with-control-char"),
    pytest.param(get(b"/", b"X-A: a", b" folded"), {400}, BAD, id="obsolete-line-folding"),
    pytest.param(
        get(b"/", b"X-Big: " + b"a" * (MAX_LINE * 2)), {400, 431}, BAD, id="header-line-too-long"
    ),
    pytest.param(
        get(b"/" + b"a" * (MAX_LINE * 2)), {400, 414, 431}, BAD, id="request-line-too-long"
    ),
    pytest.param(
        get(b"/", *(b"X-H%d: v" % i for i in range(MAX_HEADERS * 2))),
        {400, 431},
        BAD,
        id="too-many-headers",
    ),
    pytest.param(b"GET / HTTP/1.1\r\n" + DOC + b"\r\n", {400}, BAD, id="http11-without-host"),
    pytest.param(b"GET / HTTP/1.0\r\n" + DOC + b"\r\n", {400}, BAD, id="http10-without-host"),
    pytest.param(get(b"/", b"Host: bad host!"), {400}, BAD, id="host-with-space"),
    pytest.param(get(b"/", b"Host: a..b"), {400}, BAD, id="host-empty-label"),
    pytest.param(get(b"/", b"Host: "), {400}, BAD, id="host-empty"),
    pytest.param(get(b"/", b"Host: shop.test:http"), {400}, BAD, id="host-bad-port"),
    pytest.param(get(b"/", b"Host: shop.test", b"Host: other.test"), {400}, BAD, id="two-hosts"),
    pytest.param(get(b"/", b"Host: other.test"), {404}, "unknown_site", id="unknown-site"),
    pytest.param(get(b"http://evil.test/"), {400, 421}, BAD, id="absolute-form-foreign-host"),
    pytest.param(
        get(b"http://shop.test@evil.test/"), {400, 421}, BAD, id="absolute-form-userinfo-foreign"
    ),
    pytest.param(
        b"CONNECT evil.test:443 HTTP/1.1\r\nHost: shop.test\r\n\r\n",
        {400, 404, 405},
        None,
        id="connect-foreign-host",
    ),
    pytest.param(
        post(b"/", b"Content-Length: 5", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n")
        + SMUGGLED,
        {400},
        BAD,
        id="cl-and-te-smuggling",
    ),
    pytest.param(
        post(b"/", b"Transfer-Encoding: chunked", b"Content-Length: 5", body=b"0\r\n\r\n")
        + SMUGGLED,
        {400},
        BAD,
        id="te-and-cl-smuggling",
    ),
    pytest.param(
        post(b"/", b"Content-Length: 5", b"Transfer-Encoding: xchunked", body=b"0\r\n\r\n")
        + SMUGGLED,
        {400},
        BAD,
        id="obfuscated-te-and-cl-smuggling",
    ),
    pytest.param(
        post(b"/", b"Transfer-Encoding : chunked", b"Content-Length: 5", body=b"0\r\n\r\n")
        + SMUGGLED,
        {400},
        BAD,
        id="te-space-before-colon-smuggling",
    ),
    pytest.param(
        post(b"/", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n", version=b"HTTP/1.0")
        + SMUGGLED,
        {400},
        BAD,
        id="chunked-in-http10-smuggling",
    ),
    pytest.param(
        post(b"/", b"Content-Length: 5", b"Content-Length: 45", body=b"hello") + SMUGGLED,
        {400},
        BAD,
        id="duplicate-content-length",
    ),
    pytest.param(post(b"/", b"Content-Length: -1"), {400}, BAD, id="negative-content-length"),
    pytest.param(
        post(b"/sink", b"Transfer-Encoding: chunked", body=b"zz\r\nhello\r\n0\r\n\r\n"),
        {400},
        BAD,
        id="invalid-chunk-size",
    ),
    pytest.param(
        post(b"/sink", b"Transfer-Encoding: chunked", body=b"f" * 20 + b"\r\nhello\r\n0\r\n\r\n"),
        {400},
        BAD,
        id="chunk-size-overflow",
    ),
    pytest.param(
        post(b"/sink", b"Content-Length: %d" % len(BIG), body=BIG),
        {413},
        BAD,
        id="oversized-body-content-length",
    ),
    pytest.param(
        get(b"/", b"Content-Length: %d" % len(BIG)) + BIG,
        {413},
        BAD,
        id="oversized-page-view-body-content-length",
    ),
    pytest.param(
        post(
            b"/sink",
            b"Transfer-Encoding: chunked",
            body=b"%x\r\n" % len(BIG) + BIG + b"\r\n0\r\n\r\n",
        ),
        {413},
        BAD,
        id="oversized-chunked-body-in-one-burst",
    ),
]


@pytest.mark.parametrize(("raw", "statuses", "outcome"), RAW_CASES)
async def test_bad_request_is_refused_without_reaching_origin_or_charging(
    env: Env, raw: bytes, statuses: set[int], outcome: str | None
) -> None:
    before = await observe(env)
    reply = await exchange(env.gw.port, [raw])
    assert reply.closed, f"connection still open after {BOUND}s: {reply.data[:300]!r}"
    # One 4xx answer: a second response would mean a smuggled request was parsed.
    assert len(reply.statuses) == 1, reply.data[:500]
    assert reply.statuses[0] in statuses, reply.data[:500]
    assert env.origin.hits["/smuggled"] == 0
    if outcome is not None:
        after = await env.gw.metrics()
        counted = sample(after, "pvgate_requests_total", outcome=outcome)
        assert counted == before.count(outcome) + 1
    await assert_unharmed(env, before)


@pytest.mark.parametrize(
    "raw", [b"GARBAGE\r\n\r\n", b"\x16\x03\x01\x00\xa5\x01\x00\r\n\r\n"], ids=["garbage", "tls"]
)
async def test_non_http_garbage_counts_as_bad_request(env: Env, raw: bytes) -> None:
    before = await observe(env)
    reply = await exchange(env.gw.port, [raw])
    assert reply.statuses == [400]
    after = await env.gw.metrics()
    assert sample(after, "pvgate_requests_total", outcome=BAD) == before.count(BAD) + 1


async def test_request_line_without_version_is_refused(env: Env) -> None:
    before = await observe(env)
    reply = await exchange(env.gw.port, [b"GET /\r\nHost: shop.test\r\n" + DOC + b"\r\n"])
    assert reply.closed
    assert len(reply.statuses) <= 1, reply.data[:300]
    assert all(400 <= s < 500 for s in reply.statuses), reply.data[:300]
    await assert_unharmed(env, before)


async def test_absolute_form_naming_the_site_host_is_served_and_charged_once(env: Env) -> None:
    before = await observe(env)
    raw = get(b"http://shop.test/abs", b"Host: shop.test", b"Connection: close")
    reply = await exchange(env.gw.port, [raw])
    assert reply.statuses == [200], reply.data[:300]
    assert env.origin.hits["/abs"] == before.hits["/abs"] + 1
    assert await used(env) == before.used + 1
    assert log_errors(env.gw)[before.log_errors :] == []


async def test_oversized_chunked_body_streamed_in_parts_is_refused_not_delivered(env: Env) -> None:
    """Without Content-Length the limit is met mid-stream: 413 or a close, never whole."""
    before = await observe(env)
    chunk = b"%x\r\n" % 800 + b"x" * 800 + b"\r\n"
    head = post(b"/sink", b"Transfer-Encoding: chunked")
    reply = await exchange(env.gw.port, [head, chunk, chunk, chunk, chunk, b"0\r\n\r\n"], gap=0.3)
    assert reply.closed
    assert reply.statuses in ([413], []), reply.data[:300]
    assert env.origin.received == before.received  # the origin never got the body whole
    assert env.origin.hits["/smuggled"] == 0
    after = await env.gw.metrics()
    if reply.statuses:
        assert sample(after, "pvgate_requests_total", outcome=BAD) == before.count(BAD) + 1
    # A body this small is read whole before the origin is contacted (up to
    # limits.request_buffer_bytes): the origin never even saw the request start.
    await assert_unharmed(env, before)


async def test_oversized_chunked_page_view_body_is_not_served_or_charged(env: Env) -> None:
    before = await observe(env)
    chunk = b"%x\r\n" % 800 + b"x" * 800 + b"\r\n"
    head = get(b"/", b"Transfer-Encoding: chunked")
    reply = await exchange(env.gw.port, [head, chunk, chunk, chunk, chunk, b"0\r\n\r\n"], gap=0.5)
    assert reply.closed
    assert reply.statuses in ([413], []), reply.data[:300]
    assert await used(env) == before.used


@pytest.mark.parametrize(
    ("rate", "send_bytes"),
    [pytest.param(0.2, True, id="trickling-headers"), pytest.param(0.0, False, id="silent")],
)
async def test_slow_client_is_closed_after_header_timeout(
    env: Env, rate: float, send_bytes: bool
) -> None:
    before = await observe(env)
    request = get(b"/", b"X-Slow: " + b"a" * 200)  # 40+ s at one byte per 0.2 s
    pieces = [request[i : i + 1] for i in range(len(request))] if send_bytes else []
    reply = await exchange(env.gw.port, pieces, gap=rate)
    assert reply.closed, f"still open after {reply.elapsed:.2f}s"
    assert HEADER_TIMEOUT * 0.8 <= reply.elapsed < BOUND, reply.elapsed
    assert all(400 <= s < 500 for s in reply.statuses), reply.data[:300]  # 408, or nothing
    await assert_unharmed(env, before)
