"""A websocket after its 101: the two connections joined, bytes passed untouched.

Each transport gets a `TunnelEnd` protocol that writes what it reads to the other side,
passes a half-close on, closes the other side when its own closes, and pauses reading
the other side while its own writes back up — so a tunnel holds at most the transports'
buffers, whatever flows through it.  It is no request: it holds no admission slot and
no origin pool slot, and is never counted as a PV.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class TunnelEnd(asyncio.Protocol):
    def __init__(self, other: asyncio.Transport, on_close: Callable[[], None]) -> None:
        self._other = other
        self._on_close = on_close

    def data_received(self, data: bytes) -> None:
        self._other.write(data)

    def eof_received(self) -> bool:
        if self._other.can_write_eof():
            self._other.write_eof()
            return True  # the other way may still be talking
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._other.close()
        self._on_close()

    def pause_writing(self) -> None:
        self._other.pause_reading()

    def resume_writing(self) -> None:
        self._other.resume_reading()


def join(
    visitor: asyncio.Transport,
    origin: asyncio.Transport,
    from_visitor: bytes,
    from_origin: bytes,
    on_close: Callable[[], None],
) -> None:
    """Join the two connections; the bytes each side sent ahead go over first."""
    visitor.set_protocol(TunnelEnd(origin, on_close))
    origin.set_protocol(TunnelEnd(visitor, lambda: None))
    if from_origin:
        visitor.write(from_origin)
    if from_visitor:
        origin.write(from_visitor)
    visitor.resume_reading()
    origin.resume_reading()
