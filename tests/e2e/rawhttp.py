"""Raw HTTP on both ends of a gateway: a capturing origin and a byte-level client.

`CapturingOrigin` is a plain asyncio server that parses what it receives with llhttp
(httptools) and records every request whole — method, target, headers, body, and the raw
bytes of its connection — then answers each with a small page marked ``X-Origin-Seq``.
`exchange` sends raw bytes to the gateway and reads until it closes; `Reply.responses`
splits what came back into responses.  Together they show what crossed the gateway in
each direction, not only the status the client saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httptools

from pvgate.embedded import free_port


@dataclass
class Received:
    """One request as the origin parsed it."""

    method: str
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    connection: int  # which origin connection it came on

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


class _OriginConnection(asyncio.Protocol):
    def __init__(self, origin: CapturingOrigin) -> None:
        self.origin = origin
        self.number = origin.connections = origin.connections + 1
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.raw = bytearray()
        self._headers: list[tuple[bytes, bytes]] = []
        self._target = b""
        self._body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.origin.raw.append(self.raw)
        self.origin.open.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.origin.open.discard(self)

    def data_received(self, data: bytes) -> None:
        self.raw += data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # answered as a plain request (on_message_complete ran): never switches
        except httptools.HttpParserError:
            self.origin.parse_errors += 1
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self._headers, self._target, self._body = [], b"", bytearray()

    def on_url(self, url: bytes) -> None:
        self._target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        request = Received(
            self.parser.get_method().decode(),
            self._target,
            self._headers,
            bytes(self._body),
            self.number,
        )
        self.origin.received.append(request)
        assert self.transport is not None
        if self.origin.responder is not None:
            self.transport.write(self.origin.responder(request))
            return
        seq = len(self.origin.received)
        body = b"origin %d %s %d\n" % (seq, request.target, len(request.body))
        head = b"HTTP/1.1 200 OK\r\nX-Origin-Seq: %d\r\nContent-Type: text/html\r\n" % seq
        assert self.transport is not None
        if request.method == "HEAD":
            self.transport.write(head + b"Content-Length: %d\r\n\r\n" % len(body))
        else:
            self.transport.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)


@dataclass
class CapturingOrigin:
    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)
    raw: list[bytearray] = field(default_factory=list)
    connections: int = 0
    parse_errors: int = 0
    server: asyncio.base_events.Server | None = None
    open: set[_OriginConnection] = field(default_factory=set)
    # The whole raw response to each request; None: a page marked X-Origin-Seq.
    responder: Callable[[Received], bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> CapturingOrigin:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: _OriginConnection(self), "127.0.0.1", self.port
        )
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for conn in list(self.open):
                assert conn.transport is not None
                conn.transport.close()
            await self.server.wait_closed()


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    @property
    def from_origin(self) -> bool:
        return self.header(b"X-Origin-Seq") is not None


class _ResponseSplitter:
    """httptools callbacks collecting every response in a byte string."""

    def __init__(self) -> None:
        self.responses: list[Response] = []
        self.parser = httptools.HttpResponseParser(self)
        self._headers: list[tuple[bytes, bytes]] = []
        self._body = bytearray()
        self.complete = True

    def on_message_begin(self) -> None:
        self._headers, self._body, self.complete = [], bytearray(), False

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        self.responses.append(Response(status, self._headers, bytes(self._body)))
        self.complete = True


@dataclass
class Reply:
    data: bytes
    closed: bool  # the gateway closed the connection within the bound
    elapsed: float

    def responses(self, head_request: bool = False) -> list[Response]:
        """Every whole response in the bytes received, in order (a body cut off at the
        close counts as a response when it had no length)."""
        splitter = _ResponseSplitter()
        with contextlib.suppress(httptools.HttpParserError):
            splitter.parser.feed_data(self.data)
        if not splitter.complete and self.closed and splitter._headers:
            splitter.on_message_complete()  # delimited by the close
        return splitter.responses

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses()]


async def exchange(
    port: int, pieces: list[bytes], *, gap: float = 0.0, bound: float = 4.0
) -> Reply:
    """Send ``pieces`` (``gap`` seconds apart), read until the gateway closes (or ``bound``)."""
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
        async with asyncio.timeout(bound):
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
