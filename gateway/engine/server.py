"""The engine of one worker: its listening socket, its connections, graceful shutdown.

`Engine` holds what every connection shares — the limits, the policy, admission control,
the origin pool — and counts what happens at the protocol level (bad requests, timeouts).
`Engine.shutdown` stops accepting, closes idle keep-alive connections at once, lets the
requests in flight finish within the grace period, then closes what is left.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

from gateway.admission import Admission
from gateway.engine.exchange import Exchange
from gateway.engine.limits import Limits
from gateway.engine.origin import OriginPool
from gateway.engine.request import Request
from gateway.engine.responses import Page, text_page
from gateway.engine.visitor import VisitorConnection
from gateway.metrics import OUTCOME, REQUEST_DURATION, TIMEOUTS
from gateway.policy import Policy
from gateway.settings import LimitsSection

log = logging.getLogger("pvgate.engine")

_REASONS = {
    400: "bad request",
    405: "method not allowed",
    408: "request timeout",
    413: "request body too large",
    414: "request line too long",
    417: "expectation failed",
    431: "request header fields too large",
    500: "internal error",
    501: "not implemented",
    505: "HTTP version not supported",
}


class Engine:
    def __init__(
        self,
        limits: LimitsSection,
        policy: Policy,
        admission: Admission,
        pool: OriginPool,
        *,
        server_header: str = "pvgate",
    ) -> None:
        self.limits = Limits(limits)
        self.policy = policy
        self.admission = admission
        self.pool = pool
        self.stopping = False
        self.read_timeout = pool.read_timeout
        self._connections: set[VisitorConnection] = set()
        self._server: asyncio.base_events.Server | None = None
        server = server_header.encode()
        self._errors: dict[int, Page] = {
            status: text_page(status, text, server) for status, text in _REASONS.items()
        }

    # What connections call -----------------------------------------------------------

    def exchange(self, visitor: VisitorConnection, request: Request) -> Exchange:
        return Exchange(self, visitor, request)

    def opened(self, visitor: VisitorConnection) -> None:
        self._connections.add(visitor)

    def closed(self, visitor: VisitorConnection) -> None:
        self._connections.discard(visitor)

    def error_page(self, status: int, reason: str) -> bytes:
        page = self._errors.get(status) or self._errors[400]
        return page.render(keep_alive=False)

    def count_outcome(self, outcome: str) -> None:
        OUTCOME[outcome].inc()

    def count_timeout(self, kind: str) -> None:
        TIMEOUTS.labels(kind).inc()

    def observe(self, seconds: float) -> None:
        REQUEST_DURATION.observe(seconds)

    # Serving -----------------------------------------------------------------------------

    async def serve(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: VisitorConnection(self), sock=sock, backlog=2048
        )

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, close idle connections, finish in-flight requests within grace."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + grace
        while self._connections and time.monotonic() < deadline:
            for conn in list(self._connections):
                conn.close_if_idle()
            await asyncio.sleep(0.05)
        for conn in list(self._connections):
            conn.abort()
        await self.pool.aclose()
