"""Test 3: 5,000 concurrent debits from 4 processes against a balance of 1,000."""

from __future__ import annotations

import pytest

from metering import BalanceStore
from pvgate.embedded import RedisServer
from tests.helpers import gift, package
from tests.load import debit_storm


@pytest.mark.timeout(180)
async def test_no_oversell_across_processes(client, servers):
    store = BalanceStore(client)
    # 1,000 PV over three buckets, so grants also cross bucket boundaries under load.
    for spec in (gift("g", 100), package("p1", 400, at=1), package("p2", 500, at=2)):
        await store.credit("hot-1", spec)
    if isinstance(servers, RedisServer):
        target = ("single", [(servers.host, servers.port)])
    else:
        target = ("cluster", servers.startup_nodes)

    outcomes = debit_storm(target, "hot-1", processes=4, callers=1250)

    assert outcomes == {"granted": 1000, "refused:exhausted": 4000}
    snapshot = await store.snapshot("hot-1")
    assert {b.id: b.used for b in snapshot.buckets} == {"g": 100, "p1": 400, "p2": 500}
    assert snapshot.available == 0
