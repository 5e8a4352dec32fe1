"""Differential: the same requests through nginx ``proxy_pass`` and through pvgate.

One capturing raw-socket origin (`tests.e2e.rawhttp`) behind both; each request of the
corpus is sent through each proxy, and what the origin received and what the client
received are compared.  nginx is configured as a reverse proxy is in production
(HTTP/1.1 and keep-alive upstream, ``X-Forwarded-For/-Proto/-Host``).  Where the two are
meant to differ, the difference is in `INTENDED` and each comparison leaves exactly
those out:

- ``Via``: pvgate adds ``1.1 pvgate``; nginx adds none.
- Request framing: a chunked body reaches the origin chunked from pvgate and with a
  ``Content-Length`` from nginx, which buffers it first; the decoded bodies must match.
- ``Server`` and ``Date`` of a proxied response: pvgate passes the origin's, nginx puts
  its own.
- Response framing and ``Connection``: a body without a length is re-chunked by both, but
  either may choose keep-alive details (``Connection``, ``Keep-Alive``) of its own.
- ``Trailer``: both drop the trailer fields of a chunked response; pvgate drops the
  ``Trailer`` header announcing them too, nginx passes it on.
- Interim responses: pvgate drops a 1xx (but 101) and forwards the final response; nginx
  1.22 does not accept a 103 from its upstream at all, so that case is tested against
  pvgate alone (tests/e2e/test_engine_http.py).

nginx is installed with ``apt-get install nginx-light`` (``.ci/run`` does); without it the
module skips, saying so.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from pvgate.embedded import free_port
from tests.e2e.harness import Gateway, redis_config, start_gateway
from tests.e2e.rawhttp import CapturingOrigin, Received, Response, exchange

NGINX = shutil.which("nginx")
pytestmark = [
    pytest.mark.skipif(
        NGINX is None, reason="nginx is not installed (apt-get install nginx-light)"
    ),
    pytest.mark.asyncio(loop_scope="module"),
]

# Headers each side is meant to differ in (see the module docstring).
INTENDED_TO_ORIGIN = {b"via", b"connection", b"content-length", b"transfer-encoding"}
INTENDED_TO_CLIENT = {
    b"server",
    b"date",
    b"connection",
    b"keep-alive",
    b"transfer-encoding",
    b"trailer",
}

NGINX_CONF = """daemon off; worker_processes 1; pid {t}/nginx.pid; error_log {t}/nginx.err;
{user}
events {{ worker_connections 256; }}
http {{
  access_log off; client_body_temp_path {t}/body; proxy_temp_path {t}/proxy;
  fastcgi_temp_path {t}/fcgi; uwsgi_temp_path {t}/uwsgi; scgi_temp_path {t}/scgi;
  client_max_body_size 10m;
  upstream origin {{ server 127.0.0.1:{origin}; keepalive 16; }}
  server {{
    listen 127.0.0.1:{port}; server_name shop.test;
    location / {{
      proxy_pass http://origin; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_set_header Host 127.0.0.1:{origin};
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header X-Forwarded-Host $host;
    }}
  }}
}}
"""


def respond(request: Received) -> bytes:
    """The origin's answer, by path: plain, 204, 304, an interim 103, trailers, echo."""
    path = request.target.split(b"?")[0]
    if path == b"/204":
        return b"HTTP/1.1 204 No Content\r\nX-Kind: none\r\n\r\n"
    if path == b"/304":
        return b'HTTP/1.1 304 Not Modified\r\nETag: "e1"\r\n\r\n'
    body = b"echo %s %s %d" % (request.method.encode(), request.target, len(request.body))
    if path == b"/hints":
        return (
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
    if path == b"/trailers":
        return (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
            b"%x\r\n%s\r\n0\r\nX-Sum: 1\r\n\r\n" % (len(body), body)
        )
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Multi: a\r\nX-Multi: b\r\n"
    if request.method == "HEAD":
        return head + b"Content-Length: %d\r\n\r\n" % len(body)
    return head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


@dataclass
class Env:
    origin: CapturingOrigin
    nginx_port: int
    gateway: Gateway


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(redis_node, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    tmp: Path = tmp_path_factory.mktemp("differential")
    origin = await CapturingOrigin(responder=respond).start()
    nginx_port = free_port()
    conf = tmp / "nginx.conf"
    # As root, nginx's worker would run as nobody and could not write its body buffers here.
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(NGINX_CONF.format(t=tmp, port=nginx_port, origin=origin.port, user=user))
    assert NGINX is not None
    nginx = subprocess.Popen(  # noqa: ASYNC220 - started once for the module
        [NGINX, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "nginx.err")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    site = {"host": "shop.test", "enterprise_id": "ent-d", "origin": origin.url}
    gw = start_gateway(
        tmp,
        {"redis": redis_config(redis_node), "metering": False,
         "site": [{**site, "status": "approved"}]},
    )  # fmt: skip
    try:
        await gw.wait_ready()
        for _ in range(100):  # nginx listening
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", nginx_port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        yield Env(origin, nginx_port, gw)
    finally:
        gw.stop()
        nginx.terminate()
        nginx.wait(10)
        await origin.stop()


H = b"Host: shop.test\r\n"
BIG = b"0123456789abcdef" * 12_800  # 200 KB


def req(method: bytes, target: bytes, *lines: bytes, body: bytes = b"") -> bytes:
    head = b"".join(line + b"\r\n" for line in lines)
    return (
        method + b" " + target + b" HTTP/1.1\r\n" + H + head + b"Connection: close\r\n\r\n" + body
    )


def chunked(data: bytes, size: int = 7000) -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(data[i : i + size]), data[i : i + size])
             for i in range(0, len(data), size)]  # fmt: skip
    return b"".join(parts) + b"0\r\n\r\n"


CORPUS = [
    pytest.param([req(b"GET", b"/")], id="get"),
    pytest.param([req(b"GET", b"/q?x=a%2Fb&y=%E4%B8%AD&z=a+b&empty=&flag&arr[]=1&t=~!*'()")],
                 id="query-odd-bytes"),
    pytest.param([req(b"HEAD", b"/doc")], id="head"),
    pytest.param([req(b"POST", b"/form", b"Content-Type: application/x-www-form-urlencoded",
                      b"Content-Length: 7", body=b"a=1&b=2")], id="post-content-length"),
    pytest.param([req(b"POST", b"/up", b"Transfer-Encoding: chunked", body=chunked(BIG))],
                 id="post-chunked-large"),
    pytest.param([req(b"POST", b"/empty", b"Content-Length: 0")], id="post-empty"),
    pytest.param([req(b"PUT", b"/put", b"Content-Length: %d" % len(BIG), body=BIG)],
                 id="put-large"),
    pytest.param([req(b"DELETE", b"/item/1")], id="delete"),
    pytest.param([req(b"OPTIONS", b"/any")], id="options"),
    pytest.param([req(b"GET", b"/h", b"X-Multi: one", b"X-Multi: two", b"X-Empty:",
                      b"X-Spaced:    padded   ", b"x-lower-Case: v", b"X-Long: " + b"v" * 4000)],
                 id="unusual-valid-headers"),
    pytest.param([req(b"GET", b"/204")], id="origin-204"),
    pytest.param([req(b"GET", b"/304", b'If-None-Match: "e1"')], id="origin-304"),
    pytest.param([req(b"GET", b"/trailers")], id="origin-chunked-with-trailers"),
    pytest.param([b"GET http://shop.test/abs?x=1 HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"],
                 id="absolute-form"),
    pytest.param([b"GET /old HTTP/1.0\r\n" + H + b"\r\n"], id="http-1.0"),
    pytest.param([b"GET /p1 HTTP/1.1\r\n" + H + b"\r\n" + b"GET /p2 HTTP/1.1\r\n" + H + b"\r\n"
                  + req(b"GET", b"/p3")], id="pipelined"),
    pytest.param([req(b"POST", b"/exp", b"Content-Length: 5", b"Expect: 100-continue",
                      body=b"hello")], id="expect-100-continue"),
]  # fmt: skip


def to_origin(
    received: list[Received],
) -> list[tuple[str, bytes, bytes, Counter[tuple[bytes, bytes]]]]:
    """What the origin got, without what the proxies are meant to differ in."""
    return [
        (
            r.method,
            r.target,
            r.body,
            Counter((k.lower(), v) for k, v in r.headers if k.lower() not in INTENDED_TO_ORIGIN),
        )
        for r in received
    ]


def to_client(responses: list[Response]) -> list[tuple[int, bytes, Counter[tuple[bytes, bytes]]]]:
    return [
        (
            r.status,
            r.body,
            Counter((k.lower(), v) for k, v in r.headers if k.lower() not in INTENDED_TO_CLIENT
                    and not (k.lower() == b"content-length" and r.status in (204, 304))),
        )
        for r in responses
    ]  # fmt: skip


async def through(env: Env, port: int, pieces: list[bytes]):
    before = len(env.origin.received)
    reply = await exchange(port, pieces)
    head = [p.split(b" ", 1)[0] == b"HEAD" for p in pieces]
    responses = reply.responses()
    if any(head):  # a HEAD answer has a length and no body: read it by hand
        status = int(reply.data.split(b" ", 2)[1])
        first = reply.data.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]
        headers = [tuple(line.split(b": ", 1)) for line in first]
        responses = [Response(status, headers, b"")]  # type: ignore[arg-type]
    return env.origin.received[before:], responses


@pytest.mark.parametrize("pieces", CORPUS)
async def test_pvgate_forwards_and_answers_as_nginx_does(env: Env, pieces: list[bytes]) -> None:
    by_nginx, nginx_saw = await through(env, env.nginx_port, pieces)
    by_pvgate, pvgate_saw = await through(env, env.gateway.port, pieces)
    assert to_origin(by_pvgate) == to_origin(by_nginx)
    assert to_client(pvgate_saw) == to_client(nginx_saw)
    assert len(pvgate_saw) >= 1
    for request in by_pvgate:  # and pvgate says so
        assert request.header(b"Via") == b"1.1 pvgate"
