"""What the benchmarks share."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def event_loop() -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    """uvloop's loop factory (what the gateway runs on) when installed, else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None, "asyncio"
    return uvloop.new_event_loop, "uvloop"
