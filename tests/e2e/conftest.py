"""Fixtures of the end-to-end tests: an origin, and gateways started as real processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import Gateway, Origin, start_gateway


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    server = await Origin().start()
    yield server
    await server.stop()


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[Any]:
    """Start gateways with `gateways(settings)`; all are stopped (SIGTERM) afterwards."""
    started: list[Gateway] = []

    def start(settings: dict[str, Any]) -> Gateway:
        gateway = start_gateway(tmp_path, settings)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()
