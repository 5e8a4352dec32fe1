"""Fuzzing the engine: generated request bytes, valid and broken, in random packets.

Hypothesis builds requests from parts — methods, targets, versions, header lines of every
kind (framing ones included), bodies framed right and wrong, line endings, pipelining —
and cuts the bytes at random points into packets sent with small gaps.  Whatever it
builds, the worker never crashes, never answers a client's error with a 5xx of its own,
and never forwards a request it refused: every request the capturing origin parsed came
back to the client as that request's response.

``limits.header_timeout_s`` is 1 s here (the default is 10 s) so that a generated request
that stops mid-head is closed quickly.  ``--run-slow`` runs 2,000 examples instead of 150.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.harness import Gateway, redis_config, start_gateway
from tests.e2e.rawhttp import CapturingOrigin, Reply


@dataclass
class Env:
    gw: Gateway
    origin: CapturingOrigin


class OriginThread:
    """The capturing origin on an event loop of its own, in a thread (the test is
    synchronous: hypothesis drives it)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.origin = CapturingOrigin()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> CapturingOrigin:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.origin.start(), self.loop).result(10)
        return self.origin

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.origin.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def exchange(port: int, pieces: list[bytes], gap: float, bound: float) -> Reply:
    """Send the pieces over a plain socket, read until the gateway closes (or ``bound``)."""
    started = time.monotonic()
    data, closed = b"", False
    with socket.create_connection(("127.0.0.1", port)) as sock:
        try:
            for piece in pieces:
                sock.sendall(piece)
                time.sleep(gap)
        except OSError:
            pass  # the gateway closed on us: that is an answer too
        sock.settimeout(0.05)
        while time.monotonic() - started < bound:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            data += chunk
    return Reply(data, closed, time.monotonic() - started)


@pytest.fixture(scope="module")
def env(redis_node, tmp_path_factory) -> Iterator[Env]:
    with OriginThread() as origin:
        yield from _with_gateway(redis_node, tmp_path_factory, origin)


def _with_gateway(redis_node, tmp_path_factory, origin: CapturingOrigin) -> Iterator[Env]:
    site = {"host": "shop.test", "enterprise_id": "ent-f", "origin": origin.url}
    gw = start_gateway(
        tmp_path_factory.mktemp("fuzz"),
        {
            "redis": redis_config(redis_node),
            "metering": False,
            "limits": {"header_timeout_s": 1.0, "max_body_bytes": 4096},
            "site": [{**site, "status": "approved"}],
        },
    )
    try:
        asyncio.run(gw.wait_ready())
        yield Env(gw, origin)
    finally:
        gw.stop()


TOKENS = st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"])
METHOD = st.one_of(TOKENS, TOKENS, st.binary(min_size=0, max_size=8))
TARGET = st.one_of(
    st.sampled_from([b"/", b"/a/b?c=d", b"*", b"http://shop.test/x", b"http://evil.test/x"]),
    st.binary(min_size=0, max_size=24).map(lambda b: b"/" + b),
)
VERSION = st.sampled_from(
    [b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"HTTX/1.1", b""]
)
FRAMING = st.sampled_from(
    [
        b"Content-Length: 0",
        b"Content-Length: 5",
        b"Content-Length: 99999",
        b"Content-Length: -1",
        b"Content-Length: 5, 5",
        b"Transfer-Encoding: chunked",
        b"Transfer-Encoding: chunked, gzip",
        b"Transfer-Encoding:",
        b"Transfer-Encoding : chunked",
        b"Connection: close",
        b"Connection: keep-alive",
        b"Expect: 100-continue",
        b"Upgrade: websocket",
        b"Host: shop.test",
        b"Host: other.test",
        b" folded: line",
    ]
)
HEADER = st.one_of(
    FRAMING,
    st.tuples(st.binary(min_size=0, max_size=12), st.binary(min_size=0, max_size=24)).map(
        lambda nv: nv[0] + b": " + nv[1]
    ),
)
BODY = st.one_of(
    st.just(b""),
    st.binary(max_size=64),
    st.binary(max_size=40).map(lambda b: b"%x\r\n%s\r\n0\r\n\r\n" % (len(b), b)),
    st.sampled_from([b"0\r\n\r\n", b"5\r\nhello\r\n0\r\nX: y\r\n\r\n", b"f" * 17 + b"\r\n"]),
)


@st.composite
def request(draw: st.DrawFn) -> bytes:
    eol = draw(st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r"]))
    lines = [draw(METHOD) + b" " + draw(TARGET) + b" " + draw(VERSION)]
    lines.append(b"Host: shop.test")
    lines += draw(st.lists(HEADER, max_size=5))
    return eol.join(lines) + eol + eol + draw(BODY)


@st.composite
def packets(draw: st.DrawFn) -> list[bytes]:
    data = b"".join(draw(st.lists(request(), min_size=1, max_size=3)))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
    pieces, start = [], 0
    for cut in [*cuts, len(data)]:
        pieces.append(data[start:cut])
        start = cut
    return [p for p in pieces if p] or [data]


EXAMPLES = 150


def examples(request: pytest.FixtureRequest) -> int:
    return 2000 if request.config.getoption("--run-slow") else EXAMPLES


def test_generated_requests_never_crash_desync_or_blame_the_gateway(env: Env, request):
    @settings(
        max_examples=examples(request),
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        derandomize=not request.config.getoption("--run-slow"),
    )
    @given(pieces=packets())
    def probe(pieces: list[bytes]) -> None:
        before = len(env.origin.received)
        reply = exchange(env.gw.port, pieces, gap=0.002, bound=2.5)
        responses = reply.responses()
        forwarded = len(env.origin.received) - before
        answered = sum(r.from_origin for r in responses)
        assert forwarded == answered, (pieces, reply.data[:400])
        for response in responses:
            if not response.from_origin:
                assert 400 <= response.status < 500 or response.status in (501, 505), (
                    pieces,
                    reply.data[:400],
                )
        assert env.gw.process.poll() is None, env.gw.log_text()

    probe()
    assert "Traceback" not in env.gw.log_text()
    assert '"level":"error"' not in env.gw.log_text()
