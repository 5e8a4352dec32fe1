"""The origin's response to one exchange: parsed by httptools, framed, written back.

A `Relay` is the httptools protocol of one response.  It drops interim (1xx) responses
but a 101, builds the visitor's head once the origin's is complete (`heads`), re-chunks
a body without a length for an HTTP/1.1 visitor, and collects what one origin read
produced so that it reaches the visitor in one write.  `Relay.feed` tells the exchange
how the read ended: more to come, the response complete, a protocol switch, or a
response the origin broke.
"""

from __future__ import annotations

import time
from enum import Enum
from typing import TYPE_CHECKING, Final

import httptools

from gateway.engine import heads
from gateway.metrics import UPSTREAM_DURATION

if TYPE_CHECKING:
    from gateway.engine.exchange import Exchange

CHUNK_END: Final = b"0\r\n\r\n"


class Fed(Enum):
    MORE = "more"
    COMPLETE = "complete"
    UPGRADE = "upgrade"
    BROKEN = "broken"


class Relay:
    """Parses one origin response and writes it to the visitor."""

    __slots__ = (
        "_exchange",
        "_out",
        "_parser",
        "_sent_at",
        "complete",
        "error",
        "response",
        "rest",
    )

    def __init__(self, exchange: Exchange, sent_at: float) -> None:
        self._exchange: Exchange | None = exchange
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._sent_at = sent_at
        self._out: list[bytes] = []
        self.response = heads.Response()
        self.complete = False
        self.error = ""
        self.rest = b""  # after a 101: what the origin sent past its head

    @property
    def started(self) -> bool:
        return self.response.head_done

    def feed(self, data: bytes) -> Fed:
        assert self._parser is not None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.rest = data[upgrade.args[0] :]
            return Fed.UPGRADE
        except httptools.HttpParserError as exc:
            self.flush()
            self.error = f"invalid response from the origin: {exc}"
            return Fed.BROKEN
        if self.complete:
            return Fed.COMPLETE
        self.flush()
        return Fed.MORE

    def end_until_close(self) -> None:
        """The origin closed: that was the end of a body read until close."""
        self.complete = True
        self.response.keep_origin = False

    def finish(self) -> None:
        """Write what is left, the last chunk of a re-chunked body included."""
        if self.response.chunked:
            self._out.append(CHUNK_END)
        self.flush()

    def flush(self) -> None:
        out = self._out
        if out and self._exchange is not None:
            self._exchange.visitor.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def detach(self) -> None:
        """The exchange is over: let go of it and of the parser (both refer back here)."""
        self._exchange = None
        self._parser = None

    # httptools callbacks -------------------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self.response.reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.response.head_done:
            heads.response_header(self.response, name, value)

    def on_headers_complete(self) -> None:
        response = self.response
        parser, exchange = self._parser, self._exchange
        assert parser is not None
        assert exchange is not None
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.response = heads.Response()  # an interim response: not forwarded
            return
        UPSTREAM_DURATION.observe(time.perf_counter() - self._sent_at)
        response.status = status
        response.head_done = True
        response.keep_origin = parser.should_keep_alive()
        if status == 101:
            return  # the tunnel starts once feed_data reports the upgrade
        head = heads.visitor_response(exchange.request, response, exchange.may_keep_alive())
        self._out.append(head)
        if not response.has_body:
            self.complete = True

    def on_body(self, data: bytes) -> None:
        if not self.complete:
            self._out.append(heads.chunk(data) if self.response.chunked else data)

    def on_message_complete(self) -> None:
        if self.response.head_done:
            self.complete = True
