"""One request's way through the engine: admission, the policy, the origin, the response.

    start ─ admission ─ Policy.route ─┬─ Local page ─────────────────────────┐
                                      ├─ Route ─ (body) ─ Meter debit ───────┤
                                      └─ Forward ─ (body) ─ origin ─ response ┴─ finished

Callbacks, not a task per request: each step that has to wait (an admission slot, an
origin connection) hands the exchange a future and goes on in its done callback; the
Meter calls the exchange back itself, in the turn that reads Redis's reply.  The request
body is held until it is whole when it is small (up to ``request_buffer_bytes``), so that
a client that trickles its body never holds an origin connection; a larger body streams,
within the pool's share for uploads.  A page view's body is always read whole before its
PV is taken.  The response streams back with back-pressure both ways; the origin
connection returns to its pool only after a complete response that allows keep-alive
(docs/architecture.md §4).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Final

from gateway.engine import heads
from gateway.engine.origin import Origin, OriginConnection, OriginUnavailable
from gateway.engine.relay import CHUNK_END, Fed, Relay
from gateway.engine.request import BadRequest, Request
from gateway.engine.responses import CONTINUE
from gateway.policy import Decision, Forward, Local
from gateway.routing import Route
from metering.deadline import Waiter
from metering.errors import MeterError
from metering.meter import DebitResult

if TYPE_CHECKING:
    from gateway.engine.server import Engine
    from gateway.engine.visitor import VisitorConnection

log: Final = logging.getLogger("pvgate.engine")

_DEBIT: Final = object()  # what an exchange waits for while its page view's debit is out
_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class Exchange(Waiter):
    """The state of one request between the visitor and the origin; for a page view, the
    waiter of its debit too (`deliver`)."""

    def __init__(self, engine: Engine, visitor: VisitorConnection, request: Request) -> None:
        super().__init__()
        self.engine = engine
        self.visitor = visitor
        self.request = request
        self._started = time.perf_counter()
        self._admitted = False
        self._waiting: object = None  # a future, or _DEBIT while the Meter has the view
        self._charge_after_body: Route | None = None
        self._charging: Route | None = None
        self._forward: Forward | None = None
        self._body: list[bytes] = []
        self._body_size = 0
        self._body_done = not request.has_body
        self._streaming = False  # the body goes to the origin as it arrives
        self._origin: OriginConnection | None = None
        self._origin_of: Origin | None = None
        self._conn_was_reused = False
        self._retried = False
        self._origin_activity = 0.0
        self._relay: Relay | None = None
        self._over = False

    # From the visitor ------------------------------------------------------------------------

    def start(self) -> None:
        admitted = self.engine.admission.enter_nowait()
        if admitted is True:
            self._admitted = True
            self._route()
        elif admitted is False:
            self._local(self.engine.policy.overloaded)
        else:
            self._wait(admitted, self._on_admission)

    def body(self, data: bytes) -> None:
        if self._over:
            return
        if self._streaming and self._origin is not None:
            self._send_body(data)
            return
        self._body.append(data)
        self._body_size += len(data)
        if self._body_size <= self.engine.limits.request_buffer_bytes:
            return
        if self._charge_after_body is not None:
            raise BadRequest(413, "a page view's body is larger than request_buffer_bytes")
        self.visitor.pause_body()  # until an origin connection is there to take it
        if self._forward is not None and not self._streaming:
            self._streaming = True
            self._acquire()

    def body_end(self) -> None:
        self._body_done = True
        if self._over:
            return
        if self._charge_after_body is not None:
            self._charge(self._charge_after_body)
        elif self._forward is not None:
            if self._streaming and self._origin is not None:
                if self.request.chunked:
                    self._origin.write(CHUNK_END)
            elif not self._streaming and self._origin is None and self._waiting is None:
                self._acquire()

    def visitor_lost(self) -> None:
        """The client went away: nothing more can be delivered."""
        forward = self._stop()
        if forward is not None and not self.response_started:
            self.engine.policy.client_gone(forward)

    def abort(self) -> None:
        """The request failed on the client's side (a timeout, a framing error): stop."""
        forward = self._stop()
        if forward is not None and not self.response_started:
            self.engine.policy.finished(forward, failed=True)

    def _stop(self) -> Forward | None:
        if self._over:
            return None
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            if not self._admitted:
                self.engine.admission.abandon(waiting)  # type: ignore[arg-type]
                self._over = True
                return None
        forward = self._forward
        self._end(reusable=False)
        return forward

    def visitor_paused(self) -> None:
        if self._origin is not None and self._origin.transport is not None:
            self._origin.transport.pause_reading()

    def visitor_resumed(self) -> None:
        if self._origin is not None and self._origin.transport is not None:
            self._origin.transport.resume_reading()

    # Deciding ----------------------------------------------------------------------------

    def _wait(self, future: asyncio.Future, then) -> None:  # type: ignore[no-untyped-def,type-arg]
        self._waiting = future
        future.add_done_callback(then)

    def _on_admission(self, admitted: asyncio.Future[bool]) -> None:
        if self._waiting is not admitted:
            return  # the visitor went away; `visitor_lost` gave the place back
        self._waiting = None
        if admitted.cancelled() or not admitted.result():
            self._local(self.engine.policy.overloaded)
            return
        self._admitted = True
        self._route()

    def _route(self) -> None:
        decision = self.engine.policy.route(self.request)
        if not isinstance(decision, Route):
            self._decided(decision)
        elif self._body_done:
            self._charge(decision)
        elif max(self.request.content_length, self._body_size) > (
            self.engine.limits.request_buffer_bytes
        ):
            self.visitor.fail(413, "a page view's body is larger than request_buffer_bytes")
        else:
            self._charge_after_body = decision  # charged once the body has arrived
            self._continue()

    def _charge(self, first: Route) -> None:
        self._charge_after_body = None
        self._charging = first
        self._waiting = _DEBIT
        decision = self.engine.policy.charge(first, self)
        if decision is not None:
            self._waiting = None
            self._decided(decision)

    def deliver(self, result: DebitResult | MeterError) -> bool:
        """The Meter's result, in the turn that read Redis's reply."""
        assert self._charging is not None
        decision = self.engine.policy.charged(self._charging, result)
        if self._waiting is not _DEBIT:  # the visitor went away meanwhile
            if isinstance(decision, Forward):
                self.engine.policy.client_gone(decision)
            return True
        self._waiting = None
        self._decided(decision)
        return True

    def _decided(self, decision: Decision) -> None:
        if isinstance(decision, Local):
            self._local(decision)
            return
        self._forward = decision
        self._origin_of = self.engine.pool.origin(decision.route.origin)
        if self.request.upgrade or self._body_done:
            self._acquire()
            return
        self._continue()
        limit = self.engine.limits.request_buffer_bytes
        if self.request.content_length > limit or self._body_size > limit:
            self._streaming = True
            self._acquire()

    def _continue(self) -> None:
        if self.request.expect_continue:
            self.request.expect_continue = False
            self.visitor.write(CONTINUE)

    def may_keep_alive(self) -> bool:
        """Whether the visitor's connection may serve another request after this one."""
        return self.request.keep_alive and self._body_done and not self.engine.stopping

    def _local(self, local: Local) -> None:
        self.engine.policy.sent(local)
        self._write_page(local)

    # The origin ----------------------------------------------------------------------------

    def _acquire(self) -> None:
        assert self._origin_of is not None
        conn = self.engine.pool.acquire(
            self._origin_of, upload=self._streaming, fresh=self.request.upgrade or self._retried
        )
        if isinstance(conn, OriginConnection):
            self._send_request(conn)
        else:
            self._wait(conn, self._on_origin)

    def _on_origin(self, conn: asyncio.Future[OriginConnection]) -> None:
        if self._waiting is not conn:  # the visitor went away
            if not conn.cancelled() and conn.exception() is None:
                self.engine.pool.release(conn.result(), reusable=True, upload=self._streaming)
            return
        self._waiting = None
        error = conn.exception()
        if error is None:
            self._send_request(conn.result())
        elif isinstance(error, OriginUnavailable):
            self._origin_failed(error.status, str(error))
        else:
            log.error("origin connection failed", exc_info=error)
            self._origin_failed(502, repr(error))

    def _send_request(self, conn: OriginConnection) -> None:
        assert self._forward is not None
        assert self._origin_of is not None
        self._origin = conn
        self._conn_was_reused = conn.reused
        conn.exchange = self
        request = self.request
        head = heads.origin_request(request, self._origin_of, self.visitor.peer)
        body, self._body = self._body, []
        if request.chunked:
            parts = [head, *(heads.chunk(b) for b in body if b)]
            if self._body_done:
                parts.append(CHUNK_END)
        else:
            parts = [head, *body]
        conn.write(b"".join(parts))
        self._relay = Relay(self, time.perf_counter())
        self._origin_activity = time.monotonic()
        conn.watch(self.engine.read_timeout)
        if self._streaming and not self._body_done:
            self.visitor.resume_body()

    def _send_body(self, data: bytes) -> None:
        assert self._origin is not None
        self._origin.write(heads.chunk(data) if self.request.chunked else data)

    def origin_paused(self) -> None:
        if not self._body_done:
            self.visitor.pause_body()

    def origin_resumed(self) -> None:
        if not self._body_done:
            self.visitor.resume_body()

    def read_time_left(self) -> float:
        """Seconds until the origin has been silent for ``read_timeout_ms`` (each time it
        must send something); the origin connection's timer asks."""
        timeout = self.engine.read_timeout
        if self._over or self.visitor.write_paused:
            return timeout  # the visitor is slow, not the origin (it has its own timeout)
        return self._origin_activity + timeout - time.monotonic()

    def origin_data(self, data: bytes) -> None:
        relay = self._relay
        assert relay is not None
        self._origin_activity = time.monotonic()
        fed = relay.feed(data)
        if fed is Fed.COMPLETE:
            self._finish()
        elif fed is Fed.UPGRADE:
            self._tunnel(relay)
        elif fed is Fed.BROKEN:
            self._origin_broke(relay.error)

    def origin_lost(self, exc: Exception | None) -> None:
        """The origin closed: the end of a body read until close, or a failure."""
        relay = self._relay
        if self._over or relay is None:
            return
        if relay.response.until_close and not relay.complete:
            relay.end_until_close()
            self._finish()
            return
        self._origin = None
        if not relay.started and self._may_retry():
            self._retried = True
            self._relay = None
            self._acquire()
            return
        self._origin_broke("the origin closed the connection" + (f": {exc}" if exc else ""))

    def origin_timed_out(self) -> None:
        if self.response_started:
            self._origin_broke("the origin stopped sending its body")
        else:
            self._origin_failed(504, "the origin did not answer in time")

    def _may_retry(self) -> bool:
        """A pooled connection found closed: retried once, for idempotent requests only."""
        return (
            self._conn_was_reused
            and not self._retried
            and self.request.method in _IDEMPOTENT
            and not self.request.has_body
        )

    # Endings -------------------------------------------------------------------------------

    def _finish(self) -> None:
        """The whole response is written: end it, give the origin connection back."""
        assert self._relay is not None
        self._relay.finish()
        response = self._relay.response
        failed = response.status >= 500
        forward = self._forward
        keep_visitor = response.keep_visitor
        self._end(reusable=response.keep_origin and self._body_done and not response.until_close)
        if forward is not None:
            self.engine.policy.finished(forward, failed)
        self._done(keep_visitor)

    def _origin_failed(self, status: int, reason: str) -> None:
        """No response came from the origin: answer 502/504 ourselves, once its PV is back
        (a visitor who retries at once must find it there)."""
        log.warning("origin %s: %s", self._forward.route.origin if self._forward else "?", reason)
        forward = self._forward
        self._end(reusable=False)
        giving_back = self.engine.policy.finished(forward, failed=True) if forward else None
        local = self.engine.policy.upstream_failed[status]
        if giving_back is None:
            self._write_page(local)
        else:
            giving_back.add_done_callback(lambda _: self._write_page(local))

    def _write_page(self, local: Local) -> None:
        """A page of the gateway's own as the whole response."""
        keep_alive = self.may_keep_alive()
        self.visitor.write(local.page.render(keep_alive, head_only=self.request.method == "HEAD"))
        self._done(keep_alive)

    @property
    def response_started(self) -> bool:
        """Whether any of the response reached the visitor (then it cannot be replaced)."""
        return self._relay is not None and self._relay.started

    def _origin_broke(self, reason: str) -> None:
        if not self.response_started:
            self._origin_failed(502, reason)
            return
        log.warning("origin %s: %s", self._forward.route.origin if self._forward else "?", reason)
        forward = self._forward
        self._end(reusable=False)
        if forward is not None:
            self.engine.policy.finished(forward, failed=True)
        self.visitor.abort()  # the response has started: all that is left is to drop it
        self._done(False)

    def _tunnel(self, relay: Relay) -> None:
        """The origin switched protocols: bytes flow both ways, untouched, until a close."""
        conn, forward = self._origin, self._forward
        assert conn is not None
        assert conn.transport is not None
        assert forward is not None
        self.visitor.write(heads.visitor_response(self.request, relay.response, True))
        conn.exchange = None
        self._origin = None
        self.engine.policy.finished(forward, failed=False)
        self._release_admission()
        self._over = True
        self.visitor.exchange = None
        self.engine.pool.detach(conn)  # a tunnel is no request: it holds no pool slot
        self.visitor.start_tunnel(conn.transport, relay.rest)

    def _end(self, *, reusable: bool) -> None:
        self._over = True
        if self._relay is not None:
            self._relay.detach()
        conn, self._origin = self._origin, None
        if conn is not None:
            self.engine.pool.release(conn, reusable=reusable, upload=self._streaming)
        self._release_admission()

    def _release_admission(self) -> None:
        if self._admitted:
            self._admitted = False
            self.engine.admission.leave()

    def _done(self, keep_alive: bool) -> None:
        self._over = True
        self._release_admission()
        self.engine.observe(time.perf_counter() - self._started)
        self.visitor.response_done(keep_alive)
