"""The origin side of the engine: a keep-alive pool of `OriginConnection`s per origin.

A connection is lent to one exchange at a time and goes back to the pool only after a
complete response that allows keep-alive (`OriginPool.release`); an idle connection is
closed after ``keepalive_s``, and one that the origin closed while idle is dropped when
found.  Per worker at most ``pool_size`` connections are open, ``pool_size_per_host`` to
one origin; past that, exchanges wait (FIFO) until one is released or a slot frees, at
most ``connect_timeout_ms``.  Requests that stream their body to the origin (larger than
``request_buffer_bytes``) may hold at most half of an origin's connections, so that slow
uploads can never take every connection from the page views (docs/architecture.md §10).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, cast
from urllib.parse import urlsplit

from gateway.settings import UpstreamSection

if TYPE_CHECKING:
    from gateway.engine.exchange import Exchange

log: Final = logging.getLogger("pvgate.engine.origin")


@dataclass(frozen=True, slots=True, eq=False)
class Origin:
    """Where a site's origin is, parsed once from its URL: `OriginPool.origin` makes one per
    URL, so an Origin is equal only to itself (and hashing one costs nothing)."""

    scheme: str
    host: str
    port: int
    host_header: bytes  # what the origin is sent as Host
    base_path: bytes  # the URL's path without its final "/", prefixed to every target

    @classmethod
    def parse(cls, url: str) -> Origin:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        assert parts.hostname is not None
        return cls(
            parts.scheme,
            parts.hostname,
            port,
            parts.netloc.rpartition("@")[2].encode("idna"),
            parts.path.rstrip("/").encode(),
        )


class OriginUnavailable(Exception):
    """No connection to the origin: refused, unreachable, or none free in time."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status  # 502; 504 for a connect timeout; 503 for no connection free


class OriginConnection(asyncio.Protocol):
    """One connection to an origin; data and events go to the exchange it is lent to."""

    def __init__(self, pool: OriginPool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.upload = False  # lent to an exchange that streams its body
        self.reused = False  # has served an exchange before the current one
        self.closed = False
        self.counted_out = False
        self.write_paused = False
        self.idle_since = 0.0
        self._keepalive = 0.0
        # One timer for the connection's two deadlines, checked lazily when it fires: the
        # lent exchange's read timeout (`Exchange.read_time_left`), or the idle time.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self.exchange is not None:
            self.exchange.origin_data(data)
        else:  # nothing was asked: an origin that talks out of turn is not reused
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.stop_timer()
        self.pool.lost(self)
        if self.exchange is not None:
            exchange, self.exchange = self.exchange, None
            exchange.origin_lost(exc)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.exchange is not None:
            self.exchange.origin_paused()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.exchange is not None:
            self.exchange.origin_resumed()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def idle(self, keepalive: float) -> None:
        """Back in the pool: closed once idle for ``keepalive``."""
        self.idle_since = time.monotonic()
        self._keepalive = keepalive
        self.watch(keepalive)

    def watch(self, delay: float) -> None:
        """Make sure the timer fires within ``delay`` (it re-checks the deadline then): a
        request sent on the connection arms it with the read timeout, costing no timer of
        its own while one is pending."""
        due = time.monotonic() + delay
        if self._timer is not None:
            if self._timer_due <= due:
                return
            self._timer.cancel()
        self._timer_due = due
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if self.closed:
            return
        exchange = self.exchange
        if exchange is not None:
            left = exchange.read_time_left()
            if left > 0:
                self.watch(left)
            else:
                exchange.origin_timed_out()
            return
        left = self.idle_since + self._keepalive - time.monotonic()
        if left > 0:
            self.watch(left)
        else:
            self.close()


class _Slots:
    """The connections of one origin: idle ones (most recent last), counts, waiters."""

    __slots__ = ("idle", "open", "uploads", "waiters")

    def __init__(self) -> None:
        self.idle: list[OriginConnection] = []
        self.open = 0
        self.uploads = 0
        self.waiters: deque[tuple[asyncio.Future[OriginConnection], bool]] = deque()


class OriginPool:
    """Keep-alive connections to the origins, within the configured limits."""

    def __init__(self, settings: UpstreamSection) -> None:
        self._settings = settings
        self._per_host = settings.pool_size_per_host
        self._max_uploads = max(1, settings.pool_size_per_host // 2)
        self._connect_timeout = settings.connect_timeout_ms / 1000
        self.read_timeout = settings.read_timeout_ms / 1000
        self._origins: dict[Origin, _Slots] = {}
        self._open = 0
        self._connecting: set[asyncio.Task[None]] = set()
        self._tls: ssl.SSLContext | None = None
        self._parsed: dict[str, Origin] = {}

    def origin(self, url: str) -> Origin:
        found = self._parsed.get(url)
        if found is None:
            found = self._parsed[url] = Origin.parse(url)
        return found

    def acquire(
        self, origin: Origin, *, upload: bool = False, fresh: bool = False
    ) -> OriginConnection | asyncio.Future[OriginConnection]:
        """An idle connection now, or a future of one (connecting, or waiting for one).

        ``fresh``: a new connection, never one that served before (a tunnel, a retry).
        """
        slots = self._origins.get(origin)
        if slots is None:
            slots = self._origins[origin] = _Slots()
        if not fresh and (not upload or slots.uploads < self._max_uploads):
            while slots.idle:
                conn = slots.idle.pop()
                if not conn.closed:  # its pending idle check will find it lent out
                    return self._lend(slots, conn, upload)
        future: asyncio.Future[OriginConnection] = asyncio.get_running_loop().create_future()
        if self._may_open(slots, upload):
            self._connect(origin, slots, future, upload)
        else:
            slots.waiters.append((future, upload))
            asyncio.get_running_loop().call_later(self._connect_timeout, self._expire, future)
        return future

    def _may_open(self, slots: _Slots, upload: bool) -> bool:
        if upload and slots.uploads >= self._max_uploads:
            return False
        return slots.open < self._per_host and self._open < self._settings.pool_size

    def _lend(
        self, slots: _Slots, conn: OriginConnection, upload: bool, counted: bool = False
    ) -> OriginConnection:
        conn.upload = upload
        if upload and not counted:
            slots.uploads += 1
        return conn

    def _connect(
        self,
        origin: Origin,
        slots: _Slots,
        future: asyncio.Future[OriginConnection],
        upload: bool,
    ) -> None:
        slots.open += 1
        self._open += 1
        if upload:
            slots.uploads += 1  # counted while connecting, so that no more are started
        task = asyncio.get_running_loop().create_task(
            self._open_connection(origin, slots, future, upload)
        )
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _open_connection(
        self,
        origin: Origin,
        slots: _Slots,
        future: asyncio.Future[OriginConnection],
        upload: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        tls = self._tls_context() if origin.scheme == "https" else None
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: OriginConnection(self, origin),
                    origin.host,
                    origin.port,
                    ssl=tls,
                    server_hostname=origin.host if tls else None,
                )
        except TimeoutError:
            error = OriginUnavailable(504, "connecting to the origin timed out")
            self._failed(slots, future, error, upload)
            return
        except OSError as exc:
            reason = f"cannot connect to the origin: {exc.strerror or exc}"
            self._failed(slots, future, OriginUnavailable(502, reason), upload)
            return
        if future.done():  # the exchange went away meanwhile: keep it for the next one
            self.release(conn, reusable=True, upload=upload)
        else:
            future.set_result(self._lend(slots, conn, upload, counted=True))

    def _failed(
        self,
        slots: _Slots,
        future: asyncio.Future[OriginConnection],
        error: Exception,
        upload: bool,
    ) -> None:
        slots.open -= 1
        self._open -= 1
        if upload:
            slots.uploads -= 1
        if not future.done():
            future.set_exception(error)
        self._serve_waiters()

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def _expire(self, future: asyncio.Future[OriginConnection]) -> None:
        if not future.done():  # capacity, not a slow origin: 503, to be retried
            future.set_exception(OriginUnavailable(503, "no connection to the origin free"))

    def release(self, conn: OriginConnection, *, reusable: bool, upload: bool) -> None:
        """An exchange is done with ``conn``: keep it (complete keep-alive response) or not."""
        slots = self._origins[conn.origin]
        if upload:
            slots.uploads -= 1
        conn.exchange = None
        conn.reused = True
        if not reusable or conn.closed:
            conn.close()  # counted out when the transport reports it lost
            return
        for _ in range(len(slots.waiters)):
            waiter, wants_upload = slots.waiters.popleft()
            if waiter.done():
                continue
            if wants_upload and slots.uploads >= self._max_uploads:
                slots.waiters.append((waiter, wants_upload))
                continue
            waiter.set_result(self._lend(slots, conn, wants_upload))
            return
        slots.idle.append(conn)
        conn.idle(self._settings.keepalive_s)

    def detach(self, conn: OriginConnection) -> None:
        """``conn`` leaves the pool for good (it became a tunnel): its slot is free."""
        conn.stop_timer()  # the tunnel has timeouts of its own
        self.lost(conn)

    def lost(self, conn: OriginConnection) -> None:
        slots = self._origins.get(conn.origin)
        if slots is None or conn.counted_out:
            return
        conn.counted_out = True
        slots.open -= 1
        self._open -= 1
        with contextlib.suppress(ValueError):
            slots.idle.remove(conn)
        self._serve_waiters()

    def _serve_waiters(self) -> None:
        """A connection closed: let the longest waiters open new ones in its place."""
        for origin, slots in self._origins.items():
            while slots.waiters and self._open < self._settings.pool_size:
                waiter, upload = slots.waiters[0]
                if waiter.done():
                    slots.waiters.popleft()
                    continue
                if not self._may_open(slots, upload):
                    break
                slots.waiters.popleft()
                self._connect(origin, slots, waiter, upload)

    async def aclose(self) -> None:
        for task in list(self._connecting):
            task.cancel()
        for slots in self._origins.values():
            for conn in slots.idle:
                conn.close()
            slots.idle.clear()
        deadline = time.monotonic() + 1.0
        while self._open and time.monotonic() < deadline:  # noqa: ASYNC110 - transports close
            await asyncio.sleep(0.01)
