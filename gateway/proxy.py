"""Forwarding a request to the site's origin and its response back, streamed both ways."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.metrics import UPSTREAM_DURATION
from gateway.settings import UpstreamSection
from metering.sites import Site

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Small bodies are read whole and written in one go; larger ones are streamed.
_READ_WHOLE = 256 * 1024
_CHUNK = 64 * 1024
VIA = "1.1 pvgate"


class BodyTooLarge(Exception):
    """The request body passed the configured limit while it was streamed."""


class StreamBroken(Exception):
    """The origin's body broke off after the response had started: it cannot be replaced."""


@dataclass(frozen=True, slots=True)
class UpstreamFailure:
    """The origin could not be reached or did not answer in time."""

    status: int  # 502 connect error, 504 timeout
    detail: str


def _strip(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], drop: frozenset[str]
) -> CIMultiDict[str]:
    named = {
        token.strip().lower()
        for value in headers.getall("Connection", ())
        for token in value.split(",")
    }
    return CIMultiDict(
        (k, v) for k, v in headers.items() if k.lower() not in drop and k.lower() not in named
    )


class Upstream:
    """A keep-alive pool to the origins and the forwarding of one request."""

    def __init__(self, settings: UpstreamSection, max_body: int) -> None:
        self._settings = settings
        self._max_body = max_body
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        s = self._settings
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=s.pool_size,
                limit_per_host=s.pool_size_per_host,
                keepalive_timeout=s.keepalive_s,
                use_dns_cache=True,
            ),
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=s.connect_timeout_ms / 1000,
                sock_read=s.read_timeout_ms / 1000,
            ),
            auto_decompress=False,  # Content-Encoding passes through untouched
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _request_headers(self, request: web.Request, host: str) -> CIMultiDict[str]:
        headers = _strip(request.headers, HOP_BY_HOP | {"host"})
        peer = request.remote or ""
        prior = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
        headers["X-Forwarded-Proto"] = request.scheme
        headers["X-Forwarded-Host"] = host
        prior_via = request.headers.get("Via")
        headers["Via"] = f"{prior_via}, {VIA}" if prior_via else VIA
        return headers

    async def forward(
        self, request: web.Request, site: Site, host: str, buffered: bytes | None = None
    ) -> web.StreamResponse | UpstreamFailure:
        """Send the request to the origin; a prepared response, or why there is none.

        An origin's own error status (5xx included) is a response, passed through.
        """
        assert self._session is not None, "Upstream.start() was not awaited"
        # rel_url: an absolute-form target (``GET http://host/x``) keeps only its path.
        url = URL(site.origin.rstrip("/") + request.rel_url.raw_path_qs, encoded=True)
        body: bytes | AsyncIterator[bytes] | None = None
        if buffered is not None:
            body = buffered
        elif request.body_exists:
            body = _limited(request.content, self._max_body)
        started = time.perf_counter()
        try:
            upstream = await self._session.request(
                request.method,
                url,
                headers=self._request_headers(request, host),
                data=body,
                allow_redirects=False,
                compress=None,
            )
        except TimeoutError as exc:
            return UpstreamFailure(504, f"origin timed out: {exc}")
        except aiohttp.ClientError as exc:
            if isinstance(exc.__cause__, BodyTooLarge):
                raise BodyTooLarge from exc
            return UpstreamFailure(502, f"origin unreachable: {type(exc).__name__}: {exc}")
        UPSTREAM_DURATION.observe(time.perf_counter() - started)
        try:
            return await self._relay(request, upstream)
        finally:
            upstream.release()

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        headers = _strip(upstream.headers, HOP_BY_HOP)
        length = upstream.content_length
        if request.method == "HEAD" or (length is not None and length <= _READ_WHOLE):
            body = b"" if request.method == "HEAD" else await upstream.read()
            return web.Response(
                status=upstream.status, reason=upstream.reason, headers=headers, body=body
            )
        response = web.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=headers
        )
        await response.prepare(request)
        while True:
            try:
                chunk = await upstream.content.read(_CHUNK)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise StreamBroken(f"origin body broke off: {exc!r}") from exc
            if not chunk:
                break
            # A write that fails is the visitor leaving, not the origin failing: it
            # propagates as it is, and the PV stays charged for a page that was sent.
            await response.write(chunk)
        await response.write_eof()
        return response


async def read_limited(request: web.Request, limit: int) -> bytes:
    """The whole request body, refused past ``limit`` bytes (for bodies without a length)."""
    return b"".join([chunk async for chunk in _limited(request.content, limit)])


async def _limited(stream: aiohttp.StreamReader, limit: int) -> AsyncIterator[bytes]:
    seen = 0
    async for chunk in stream.iter_chunked(_CHUNK):
        seen += len(chunk)
        if seen > limit:
            raise BodyTooLarge(f"request body over {limit} bytes")
        yield chunk
