"""The visitor side of the engine: one `VisitorConnection` per client TCP connection.

Input is fed to llhttp one message at a time (`gateway.engine.framing`): while a request
is being answered, bytes that follow it are held, unparsed, and reading pauses; once the
response is complete the next pipelined request is parsed.  So responses go out strictly
in order, a request the gateway refused is never followed by one it reads differently,
and a connection holds at most one request and a bounded buffer at a time.

Timeouts are one loop timer per connection, checked lazily against the deadline of the
state the connection is in: the head (``header_timeout_s``, also the keep-alive idle
time), the body (``body_idle_timeout_s`` between bytes, ``body_timeout_s`` in all), and
writing to a client that does not read (``send_timeout_s``).  A request that is cut off
mid-body gets 408 and its origin connection is closed, never reused.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import TYPE_CHECKING, Final, cast

import httptools

from gateway.engine import heads, tunnel
from gateway.engine.framing import ChunkedScanner, FramingError, find_head_end
from gateway.engine.request import BadRequest, Request

if TYPE_CHECKING:
    from gateway.engine.exchange import Exchange
    from gateway.engine.server import Engine

log: Final = logging.getLogger("pvgate.engine")

# The connection's state (Final: compiled, each is a constant, not a lookup).
HEAD: Final = 0
BODY: Final = 1
WAIT: Final = 2
CLOSED: Final = 3
_TRAILING_SPACE: Final = frozenset(b" \t")
_HELD_MAX: Final = 64 * 1024  # bytes of a pipelined request held while the previous is answered


class VisitorConnection(asyncio.Protocol):
    """Parses requests from one client and writes their responses, in order."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.limits = engine.limits
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self._state = HEAD
        self._held = b""  # input after the current request, not parsed yet
        self._tail = b""  # the last bytes fed of the current head
        self._head_size = 0
        self._line = 0  # bytes of the request line, then of the current header
        self._body_left = 0
        self._scanner: ChunkedScanner | None = None
        self._request: Request | None = None  # being parsed
        self._ready: Request | None = None  # head complete, to be started
        self._message_done = False
        self.exchange: Exchange | None = None
        self._feeding = False
        self._reading_paused = False
        self._body_paused = False
        self.write_paused = False
        self._write_paused_at = 0.0
        self._started = 0.0  # of the current head, or of the body
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0
        self.requests = 0

    # asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = self.transport.get_extra_info("peername")
        self.peer = peer[0] if peer else ""
        self.engine.opened(self)
        self._await_head()

    def data_received(self, data: bytes) -> None:
        self._last_read = time.monotonic()
        if self._state == WAIT or self._feeding:
            self._hold(data)  # parsed once the response in progress is complete
        elif self._state != CLOSED:
            try:
                self._feed(data)
            except Exception:  # a bug must not take the worker's other connections down
                log.exception("request handling failed")
                self.fail(500, "internal error", outcome=None)

    def eof_received(self) -> bool:
        # The client will send nothing more; a response in progress still goes out.
        if self._state == HEAD and not self._head_size:
            return False  # idle: close
        if self._state in (HEAD, BODY):
            self.fail(400, "the client closed mid-request")
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = CLOSED
        self._cancel_timer()
        self._parser = None  # it refers back to this connection
        self.engine.closed(self)
        if self.exchange is not None:
            exchange, self.exchange = self.exchange, None
            exchange.visitor_lost()

    def pause_writing(self) -> None:
        self.write_paused = True
        self._write_paused_at = time.monotonic()
        if self.exchange is not None:
            self.exchange.visitor_paused()
        self._arm(self.limits.send_timeout_s)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.exchange is not None:
            self.exchange.visitor_resumed()

    # Feeding llhttp ------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self._feeding = True
        try:
            while data and self._state in (HEAD, BODY):
                data = self._feed_head(data) if self._state == HEAD else self._feed_body(data)
                if self._ready is not None:
                    self._start()
            if data and self._state == WAIT:
                self._hold(data)
        except (httptools.HttpParserError, FramingError, BadRequest) as exc:
            self._refuse(exc)
        finally:
            self._feeding = False

    def _feed_head(self, data: bytes) -> bytes:
        end = find_head_end(self._tail, data)
        piece = data if end == -1 else data[:end]
        self._head_size += len(piece)
        if self._head_size > self.limits.max_head_bytes:
            raise BadRequest(431, "request head too large")
        self._parse(piece)
        if end == -1:
            self._tail = (self._tail + piece)[-3:]
            return b""
        self._tail = b""
        return data[end:]

    def _feed_body(self, data: bytes) -> bytes:
        if self._scanner is not None:
            n = self._scanner.scan(data)
            done = self._scanner.done
        else:
            n = min(self._body_left, len(data))
            self._body_left -= n
            done = not self._body_left
        self._parse(data[:n] if n < len(data) else data)
        if done != self._message_done:
            raise BadRequest(400, "chunked body framing is inconsistent")
        if done:
            self._state = WAIT
            if self.exchange is not None:
                self.exchange.body_end()
        return data[n:]

    def _parse(self, data: bytes) -> None:
        parser = self._parser
        assert parser is not None
        # On an Upgrade the head was fed whole.  A websocket request: what follows is for
        # the origin once it answers 101.  Any other Upgrade is served as a plain request
        # (`Request.complete`), and httptools has already resumed parsing after it.
        # Not contextlib.suppress: that is three interpreted calls a request.
        try:  # noqa: SIM105
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass

    def _hold(self, data: bytes) -> None:
        self._held += data
        if len(self._held) > _HELD_MAX:
            self._pause_reading()  # the kernel's buffer holds the rest

    # llhttp callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._request = Request()
        self._message_done = False
        self._line = 0

    def on_url(self, url: bytes) -> None:
        assert self._request is not None
        self._request.target += url
        self._line += len(url)
        if self._line > self.limits.max_header_line:
            raise BadRequest(414, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self._request
        assert request is not None
        if self._state == BODY:
            return  # a trailer: dropped, never forwarded
        if len(name) + len(value) + 2 > self.limits.max_header_line:
            raise BadRequest(431, "header line too long")
        headers = request.headers
        if len(headers) >= self.limits.max_headers:
            raise BadRequest(431, "too many headers")
        if value and value[-1] in _TRAILING_SPACE:
            value = value.rstrip(b" \t")  # llhttp drops leading whitespace, not trailing
        headers.append((name, value))
        known = heads.request_header(request, name, value)
        if known.purpose:
            request.purpose = True
        key = known.field
        if key is not None:
            if known.single and key in request.fields:
                raise BadRequest(400, f"{name.decode('latin-1')} sent twice")
            request.fields[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        request = self._request
        parser = self._parser
        assert request is not None
        assert parser is not None
        request.method = parser.get_method().decode()
        request.version = parser.get_http_version()
        request.keep_alive = parser.should_keep_alive()
        request.upgrade = parser.should_upgrade()
        request.complete()
        self._ready = request

    def on_body(self, body: bytes) -> None:
        if self.exchange is not None:
            self.exchange.body(body)

    def on_message_complete(self) -> None:
        self._message_done = True

    # Requests ------------------------------------------------------------------------------

    def _start(self) -> None:
        request, self._ready = self._ready, None
        assert request is not None
        self.requests += 1
        if request.chunked:
            self._scanner = ChunkedScanner(self.limits.max_body_bytes)
        elif request.content_length > self.limits.max_body_bytes:
            raise BadRequest(413, "request body too large")
        else:
            self._scanner = None
            self._body_left = request.content_length
        done = self._message_done
        self._state = WAIT if done else BODY
        if not done:
            self._started = self._last_read = time.monotonic()
            self._arm(min(self.limits.body_idle_timeout_s, self.limits.body_timeout_s))
        # else the pending head timer is left to find nothing due (cheaper than a cancel)
        exchange = self.exchange = self.engine.exchange(self, request)
        exchange.start()
        if done and self._current() is exchange:  # not answered by `start` already
            exchange.body_end()

    def _current(self) -> Exchange | None:
        """The exchange in progress, read afresh (a call may have ended the one a caller
        holds; mypy's narrowing, which mypyc enforces, would not know)."""
        return self.exchange

    def response_done(self, keep_alive: bool) -> None:
        """The exchange wrote its whole response; the next request may be read."""
        self.exchange = None
        if self._state == CLOSED:
            return
        if not keep_alive or self._state != WAIT or self.engine.stopping:
            self.close()
            return
        self._state = HEAD
        self._head_size = 0
        self._await_head()
        if not self._feeding:
            held, self._held = self._held, b""
            self._resume_reading()
            if held:
                self._feed(held)

    # Flow control of the request body --------------------------------------------------

    def pause_body(self) -> None:
        """Stop reading: the origin cannot take more of the body yet."""
        self._body_paused = True
        self._pause_reading()

    def resume_body(self) -> None:
        self._body_paused = False
        if self._state == BODY:
            self._last_read = time.monotonic()  # waiting on the origin is not idling
            self._resume_reading()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    # Writing -----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and self._state != CLOSED:
            self.transport.write(data)

    def fail(self, status: int, reason: str, outcome: str | None = "bad_request") -> None:
        """Answer a client error (when no response has started) and close."""
        log.debug("request refused: %s %s", status, reason)
        if outcome is not None:
            self.engine.count_outcome(outcome)
        if self.exchange is not None:
            exchange, self.exchange = self.exchange, None
            if exchange.response_started:
                exchange.abort()
                self.close()
                return
            exchange.abort()
        self.write(self.engine.error_page(status, reason))
        self.close()

    def _refuse(self, exc: Exception) -> None:
        if isinstance(exc, httptools.HttpParserCallbackError):
            # A callback raised: a refusal of ours, or a bug (not the client's error).
            cause = exc.__context__
            if not isinstance(cause, BadRequest | FramingError):
                log.error("request handling failed", exc_info=cause)
                self.fail(500, "internal error", outcome=None)
                return
            exc = cause
        if isinstance(exc, BadRequest | FramingError):
            self.fail(exc.status, exc.reason)
        else:
            self.fail(400, str(exc) or type(exc).__name__)

    def close(self) -> None:
        if self._state == CLOSED:
            return
        self._state = CLOSED
        self._cancel_timer()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once (a response broke off mid-body)."""
        self._state = CLOSED
        self._cancel_timer()
        if self.transport is not None:
            self.transport.abort()

    def start_tunnel(self, origin: asyncio.Transport, from_origin: bytes) -> None:
        """After a 101: this connection and the origin's are joined (`tunnel`)."""
        assert self.transport is not None
        self._cancel_timer()
        self._state = CLOSED  # for this protocol: the transport is the tunnel's now
        self._reading_paused = False
        held, self._held = self._held, b""
        tunnel.join(self.transport, origin, held, from_origin, lambda: self.engine.closed(self))

    def close_if_idle(self) -> bool:
        """At shutdown: close a keep-alive connection waiting for its next request."""
        if self._state == HEAD and not self._head_size and self.exchange is None:
            self.close()
            return True
        return False

    # Timeouts -----------------------------------------------------------------------------

    def _await_head(self) -> None:
        self._started = time.monotonic()
        self._tail = b""
        self._arm(self.limits.header_timeout_s)

    def _arm(self, delay: float) -> None:
        """Make sure the timer fires within ``delay`` (it re-checks the deadline then)."""
        due = time.monotonic() + delay
        if self._timer is not None:
            if self._timer_due <= due:
                return
            self._timer.cancel()
        self._timer_due = due
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _deadline(self) -> float | None:
        """When the current state times out (monotonic), or None if nothing is due."""
        limits = self.limits
        due: float | None = None
        if self._state == HEAD:
            due = self._started + limits.header_timeout_s
        elif self._state == BODY and not self._body_paused:
            due = min(
                self._last_read + limits.body_idle_timeout_s, self._started + limits.body_timeout_s
            )
        if self.write_paused:
            paused = self._write_paused_at + limits.send_timeout_s
            due = paused if due is None else min(due, paused)
        return due

    def _on_timer(self) -> None:
        self._timer = None
        due = self._deadline()
        if due is None or self._state == CLOSED:
            return
        left = due - time.monotonic()
        if left > 0:
            self._arm(left)
        elif self.write_paused:
            self.engine.count_timeout("send")
            self.abort()
            if self.exchange is not None:
                exchange, self.exchange = self.exchange, None
                exchange.visitor_lost()
        elif self._state == HEAD:
            self.engine.count_timeout("header" if self._head_size else "idle")
            if self._head_size:
                self.write(self.engine.error_page(408, "request head not received in time"))
            self.close()
        else:
            self.engine.count_timeout("body")
            self.fail(408, "request body not received in time", outcome=None)
