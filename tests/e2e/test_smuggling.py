"""Framing the gateway refuses rather than reinterprets, checked on both sides of it.

Each case is raw bytes sent to a real gateway (default settings) in front of a capturing
raw-socket origin (`tests.e2e.rawhttp`).  Asserted for every case: the statuses the
client got, how many requests reached the origin, and that these match — every request
the origin parsed came back to the client as one response (no desync: a smuggled request
would be one the origin answered and the client never saw) — plus, where it matters,
exactly what the origin received.  The classic request-smuggling probes (CL.TE, TE.CL,
TE.TE, obfuscated Transfer-Encoding, duplicate Content-Length, bare LF/CR, obs-fold, NUL,
chunk extensions, trailers carrying framing headers) are among them; RFC 9112 §6 and §7
say what a recipient must do with each.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
import pytest_asyncio

from metering import BalanceStore
from pvgate.embedded import RedisServer
from tests.conftest import single_client
from tests.e2e.harness import Gateway, redis_config, start_gateway
from tests.e2e.rawhttp import CapturingOrigin, Received, exchange
from tests.helpers import package

pytestmark = pytest.mark.asyncio(loop_scope="module")

H = b"Host: shop.test\r\n"
CLOSE = b"Connection: close"  # a line for req()


def req(method: bytes, *lines: bytes, body: bytes = b"", target: bytes = b"/x") -> bytes:
    head = b"".join(line + b"\r\n" for line in lines)
    return method + b" " + target + b" HTTP/1.1\r\n" + H + head + b"\r\n" + body


SMUGGLED = b"GET /smuggled HTTP/1.1\r\n" + H + b"\r\n"
GOOD_CLOSE = b"GET /ok HTTP/1.1\r\n" + H + CLOSE + b"\r\n\r\n"


@dataclass
class Env:
    gw: Gateway
    origin: CapturingOrigin


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(
    redis_node: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Env]:
    redis_node.client().flushall()
    client = single_client(redis_node)
    origin = await CapturingOrigin().start()
    site = {"host": "shop.test", "enterprise_id": "ent-sm", "origin": origin.url}
    gw = start_gateway(
        tmp_path_factory.mktemp("smuggling"),
        {"redis": redis_config(redis_node), "site": [{**site, "status": "approved"}]},
    )
    try:
        await BalanceStore(client).credit("ent-sm", package("p", 1000))
        await gw.wait_ready()
        yield Env(gw, origin)
    finally:
        gw.stop()
        await origin.stop()
        await client.aclose()


Check = Callable[[list[Received]], None]


def body_is(expected: bytes) -> Check:
    def check(received: list[Received]) -> None:
        assert [r.body for r in received] == [expected]
        assert received[0].header(b"Transfer-Encoding") in (None, b"chunked")

    return check


def targets(*expected: bytes) -> Check:
    def check(received: list[Received]) -> None:
        assert [r.target for r in received] == list(expected)

    return check


def no_framing_from_trailers(received: list[Received]) -> None:
    assert [r.body for r in received] == [b"hello"]
    names = {k.lower() for k, _ in received[0].headers}
    assert b"x-evil" not in names
    assert b"content-length" not in names


BAD = {400}
# (raw bytes, statuses the client must get, requests that must reach the origin, check)
CASES = [
    # -- issue "Exact under stress" §2 ----------------------------------------------------
    pytest.param(req(b"POST", b"Transfer-Encoding: chunked", body=b"f" * 16 + b"\r\n0\r\n\r\n"),
                 [413], 0, None, id="chunk-size-2**64-1"),
    pytest.param(req(b"POST", b"Transfer-Encoding: chunked", body=b"f" * 17 + b"\r\n0\r\n\r\n"),
                 [400], 0, None, id="chunk-size-over-64-bits"),
    pytest.param(req(b"POST", b"Transfer-Encoding:", b"Content-Length: 5", body=b"hello"),
                 [400], 0, None, id="empty-te-beside-cl"),
    pytest.param(b"GET /x HTTP/2.0\r\n" + H + b"\r\n", [505], 0, None, id="http-2.0-request-line"),
    pytest.param(b"GET /a HTTP/1.1\r\n" + H + b"\r\nGARBAGE\r\n\r\n", [200, 400], 1,
                 targets(b"/a"), id="valid-then-garbage"),
    pytest.param(b"GET /a HTTP/1.1\r\n" + H + CLOSE + b"\r\n\r\n" + SMUGGLED, [200], 1,
                 targets(b"/a"), id="connection-close-then-more-bytes"),
    # -- CL.TE / TE.CL / TE.TE ------------------------------------------------------------
    pytest.param(req(b"POST", b"Content-Length: 13", b"Transfer-Encoding: chunked",
                     body=b"0\r\n\r\n" + SMUGGLED), BAD, 0, None, id="cl-te"),
    pytest.param(req(b"POST", b"Transfer-Encoding: chunked", b"Content-Length: 4",
                     body=b"5c\r\n" + SMUGGLED + b"\r\n0\r\n\r\n"), BAD, 0, None, id="te-cl"),
    pytest.param(req(b"POST", b"Transfer-Encoding: chunked", b"Transfer-Encoding: x",
                     body=b"0\r\n\r\n"), BAD, 0, None, id="te-te-second-value"),
    pytest.param(req(b"POST", b"Transfer-Encoding: xchunked", body=b"0\r\n\r\n" + SMUGGLED),
                 {400, 501}, 0, None, id="te-obfuscated-xchunked"),
    pytest.param(req(b"POST", b"Transfer-Encoding : chunked", body=b"0\r\n\r\n" + SMUGGLED),
                 BAD, 0, None, id="te-space-before-colon"),
    pytest.param(req(b"POST", b"Transfer-Encoding: chunked, identity", body=b"0\r\n\r\n"),
                 {400, 501}, 0, None, id="te-chunked-not-last"),
    pytest.param(req(b"POST", b"Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"),
                 {400, 501}, 0, None, id="te-unsupported-coding"),
    pytest.param(req(b"POST", b"X-A: b", b" Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
                 BAD, 0, None, id="te-in-obs-fold"),
    pytest.param(b"POST /x HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                 + SMUGGLED, BAD, 0, None, id="te-in-http-1.0"),
    pytest.param(req(b"POST", b"Transfer-Encoding: Chunked", body=b"5\r\nhello\r\n0\r\n\r\n")
                 + GOOD_CLOSE, [200, 200], 2, None, id="te-mixed-case-is-chunked"),
    # -- Content-Length -------------------------------------------------------------------
    pytest.param(req(b"POST", b"Content-Length: 5", b"Content-Length: 5", body=b"hello"),
                 BAD, 0, None, id="duplicate-cl-same"),
    pytest.param(req(b"POST", b"Content-Length: 5", b"Content-Length: 44", body=b"hello"
                     + SMUGGLED), BAD, 0, None, id="duplicate-cl-different"),
    pytest.param(req(b"POST", b"Content-Length: 5, 5", body=b"hello"), BAD, 0, None,
                 id="cl-list"),
    pytest.param(req(b"POST", b"Content-Length: +5", body=b"hello"), BAD, 0, None,
                 id="cl-plus-sign"),
    pytest.param(req(b"POST", b"Content-Length: 0x5", body=b"hello"), BAD, 0, None,
                 id="cl-hex"),
    pytest.param(req(b"POST", b"Content-Length: 5", body=b"hello") + GOOD_CLOSE, [200, 200],
                 2, targets(b"/x", b"/ok"), id="cl-body-then-pipelined"),
    # -- line endings, control bytes, folding ---------------------------------------------
    pytest.param(b"GET /x HTTP/1.1\n" + b"Host: shop.test\n\n", BAD, 0, None, id="bare-lf"),
    pytest.param(b"GET /x HTTP/1.1\r\nHost: shop.test\r\nX-A: a\rb\r\n\r\n", BAD, 0, None,
                 id="bare-cr-in-value"),
    pytest.param(req(b"GET", b"X-A: a\x00b"), BAD, 0, None, id="nul-in-header"),
    pytest.param(b"GET /x\x00y HTTP/1.1\r\n" + H + b"\r\n", BAD, 0, None, id="nul-in-target"),
    pytest.param(req(b"GET", b"X-A: a", b"\tfolded"), BAD, 0, None, id="obs-fold-tab"),
    pytest.param(req(b"GET", b": no-name"), BAD, 0, None, id="empty-header-name"),
    pytest.param(req(b"GET", b"X(A): b"), BAD, 0, None, id="invalid-header-name"),
    # RFC 9112 §3 lets a recipient split the request line on whitespace: either answer
    # is right, as long as what reaches the origin is what the client saw answered.
    pytest.param(b"GET  /x HTTP/1.1\r\n" + H + CLOSE + b"\r\n\r\n", {200, 400}, None, None,
                 id="double-space"),
    pytest.param(b"G\x01T /x HTTP/1.1\r\n" + H + b"\r\n", BAD, 0, None, id="control-in-method"),
    # -- chunks ---------------------------------------------------------------------------
    pytest.param(req(b"POST", b"Transfer-Encoding: chunked", body=b"5;ext=1\r\nhello\r\n0\r\n\r\n")
                 + GOOD_CLOSE, [200, 200], 2, None, id="chunk-extension-valid"),
    pytest.param(req(b"POST", b"Transfer-Encoding: chunked", body=b"5;" + b"e" * 5000
                     + b"\r\nhello\r\n0\r\n\r\n"), BAD, 0, None, id="chunk-extension-huge"),
    pytest.param(req(b"POST", b"Transfer-Encoding: chunked", body=b"5 \r\nhello\r\n0\r\n\r\n"),
                 BAD, 0, None, id="chunk-size-trailing-space"),
    pytest.param(req(b"POST", b"Transfer-Encoding: chunked", body=b"5\nhello\r\n0\r\n\r\n"),
                 BAD, 0, None, id="chunk-size-bare-lf"),
    pytest.param(req(b"POST", b"Transfer-Encoding: chunked", body=b"3\r\nhello\r\n0\r\n\r\n"),
                 BAD, 0, None, id="chunk-longer-than-size"),
    pytest.param(req(b"POST", b"Transfer-Encoding: chunked", body=b"-5\r\nhello\r\n0\r\n\r\n"),
                 BAD, 0, None, id="chunk-size-negative"),
    pytest.param(req(b"POST", b"Transfer-Encoding: chunked",
                     body=b"5\r\nhello\r\n0\r\nContent-Length: 99\r\n\r\n" + SMUGGLED),
                 BAD, 0, None, id="trailer-carrying-content-length"),
    pytest.param(req(b"POST", b"Transfer-Encoding: chunked",
                     body=b"5\r\nhello\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + SMUGGLED), BAD, 0, None, id="trailer-carrying-transfer-encoding"),
    pytest.param(req(b"POST", b"Transfer-Encoding: chunked", CLOSE,
                     body=b"5\r\nhello\r\n0\r\nX-Evil: 1\r\n\r\n"),
                 [200], 1, no_framing_from_trailers, id="trailers-dropped"),
    pytest.param(req(b"POST", b"Transfer-Encoding: chunked", CLOSE,
                     body=b"2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n"), [200], 1, body_is(b"hello"),
                 id="chunked-body-reaches-origin-whole"),
    # -- hosts and targets ----------------------------------------------------------------
    pytest.param(b"GET http://evil.test/x HTTP/1.1\r\n" + H + b"\r\n", BAD, 0, None,
                 id="absolute-form-other-host"),
    pytest.param(req(b"GET", b"Host: evil.test"), BAD, 0, None, id="two-hosts"),
    pytest.param(b"GET /x HTTP/1.1\r\nHost: a@shop.test\r\n\r\n", BAD, 0, None,
                 id="host-with-userinfo"),
    pytest.param(req(b"GET", b"Upgrade: h2c", b"HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA",
                     b"Connection: Upgrade, HTTP2-Settings, close"), [200], 1,
                 lambda rs: None if rs[0].header(b"Upgrade") is None
                 and rs[0].header(b"HTTP2-Settings") is None else pytest.fail("h2c forwarded"),
                 id="h2c-upgrade-not-tunnelled"),
    pytest.param(req(b"GET", CLOSE, b"Expect: 100-continue"), [200], 1, None,
                 id="expect-without-body"),
    pytest.param(req(b"POST", b"Content-Length: 5", b"Expect: 100-continue", CLOSE,
                     body=b"hello"), [100, 200], 1, body_is(b"hello"), id="expect-100-continue"),
    pytest.param(req(b"GET", b"Expect: nothing-known"), [417], 0, None, id="expect-unknown"),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "statuses", "reached", "check"), CASES)
async def test_framing_is_refused_or_kept_and_never_desyncs(
    env: Env,
    raw: bytes,
    statuses: list[int] | set[int],
    reached: int | None,
    check: Check | None,
) -> None:
    before = len(env.origin.received)
    reply = await exchange(env.gw.port, [raw])
    received = env.origin.received[before:]
    responses = reply.responses()
    got = [r.status for r in responses]
    if isinstance(statuses, set):
        assert len(got) == 1, reply.data[:400]
        assert got[0] in statuses, reply.data[:400]
    else:
        assert got == statuses, reply.data[:400]
    assert reply.closed or got[-1] == 200, "a refused connection must be closed"
    if reached is not None:
        assert len(received) == reached, [r.target for r in received]
    # No desync: each request the origin parsed is one response the client received.
    assert sum(r.from_origin for r in responses) == len(received)
    assert all(r.target != b"/smuggled" for r in received)
    if check is not None:
        check(received)
    assert env.gw.process.poll() is None, env.gw.log_text()


async def test_the_same_probe_split_at_every_byte_is_read_the_same(env: Env) -> None:
    """llhttp is fed what arrives; where the packets break must not change the answer."""
    raw = req(b"POST", b"Content-Length: 13", b"Transfer-Encoding: chunked",
              body=b"0\r\n\r\n" + SMUGGLED)  # fmt: skip
    for cut in range(1, len(raw), 7):
        before = len(env.origin.received)
        reply = await exchange(env.gw.port, [raw[:cut], raw[cut:]], gap=0.01)
        assert reply.statuses == [400], (cut, reply.data[:200])
        assert len(env.origin.received) == before


async def test_log_has_no_tracebacks(env: Env) -> None:
    assert "Traceback" not in env.gw.log_text()
