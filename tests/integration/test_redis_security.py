"""Redis with a password and TLS, one node and a Cluster, as production runs it.

The servers listen on TLS only (no plaintext port) and want a password, so a command that
works went through both.  Certificates come from a throwaway CA made with trustme.  Every
client pvgate makes is covered: the Meter's own connection, the redis-py client (one node,
cluster), and the site-change subscriber's connection to a cluster node.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import trustme
from redis.asyncio.cluster import RedisCluster

from gateway.routing import SiteWatcher
from metering import BalanceStore, Meter
from metering.connection import RedisSettings
from metering.errors import MeterError
from metering.keys import enterprise_keys
from metering.scripts import RedisClient
from metering.sites import Site, SiteRegistry, SiteStatus
from pvgate.embedded import RedisServer
from tests.helpers import package
from tests.tls import PASSWORD, settings


async def debit_and_count(client: RedisClient, enterprises: list[str], views: int) -> int:
    """Credit each enterprise, take ``views`` PV from each through a Meter; PV used."""
    store = BalanceStore(client)
    for enterprise in enterprises:
        await store.credit(enterprise, package("p", 1000))
    meter = Meter(client)
    await meter.prepare()
    try:
        results = await asyncio.gather(*(meter.debit(e) for e in enterprises for _ in range(views)))
    finally:
        await meter.aclose()
    assert all(r.granted for r in results)
    snapshots = [await store.snapshot(e) for e in enterprises]
    return sum(b.used for s in snapshots for b in s.buckets)


async def test_meter_and_store_on_a_tls_node_with_a_password(tls_node, pki):
    client = await settings(tls_node, pki).open()
    try:
        assert await debit_and_count(client, ["tls-a", "tls-b"], 25) == 50
    finally:
        await client.aclose()


async def test_a_client_certificate_when_redis_asks_for_one(pki, tls_node):
    # tls_node: skips where redis-server cannot serve TLS; this test needs a server of its own
    with RedisServer(security=pki.security(client_certs=True)) as server:
        with_cert = settings(
            server, pki, tls_cert_file=str(pki.client_cert), tls_key_file=str(pki.client_key)
        )
        client = await with_cert.open()
        try:
            assert await debit_and_count(client, ["cert-a"], 10) == 10
        finally:
            await client.aclose()
        without = await settings(server, pki).open()
        try:
            with pytest.raises(MeterError):
                await BalanceStore(without).snapshot("cert-a")
        finally:
            await without.aclose()


async def test_a_wrong_password_or_an_unknown_ca_is_refused_clearly(tls_node, pki, tmp_path):
    wrong = await RedisSettings(
        url=f"rediss://127.0.0.1:{tls_node.port}/0",
        password="not-it",
        tls_ca_file=str(pki.ca),
    ).open()
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    untrusted = await RedisSettings(
        url=f"rediss://127.0.0.1:{tls_node.port}/0",
        password=PASSWORD,
        tls_ca_file=str(other_ca),
    ).open()
    try:
        with pytest.raises(MeterError, match=r"(?i)password|auth"):
            await BalanceStore(wrong).snapshot("x")
        with pytest.raises(MeterError, match=r"(?i)certificate"):
            await BalanceStore(untrusted).snapshot("x")
        meter = Meter(wrong)
        with pytest.raises(MeterError):
            await meter.debit("x")
        await meter.aclose()
    finally:
        await wrong.aclose()
        await untrusted.aclose()


async def test_meter_and_store_on_a_tls_cluster_with_a_password(tls_cluster, pki):
    client = await settings(tls_cluster, pki).open()
    try:
        # Enough enterprises that every master holds some of them.
        enterprises = [f"tls-cl-{i}" for i in range(12)]
        assert await debit_and_count(client, enterprises, 5) == 60
        assert isinstance(client, RedisCluster)
        holders = {
            tls_cluster.node_for_slot(client.keyslot(enterprise_keys(e)[0])).port
            for e in enterprises
        }
        assert len(holders) == len(tls_cluster.nodes)
    finally:
        await client.aclose()


async def test_site_changes_reach_a_watcher_on_a_tls_cluster(tls_cluster, pki):
    """The subscriber's own connection to a node takes the password and TLS: with the
    periodic check set to a minute (so that only a notification can explain a change
    seen at once), a new site is routed within a second."""
    client = await settings(tls_cluster, pki).open()
    watcher = SiteWatcher(client, refresh=60.0)
    try:
        await watcher.start()
        await asyncio.sleep(0.5)  # the subscription is made
        site = Site(
            host="tls-watch.test",
            enterprise_id="ent-watch",
            origin="http://127.0.0.1:9",
            status=SiteStatus.APPROVED,
        )
        await SiteRegistry(client).put(site)
        changed = time.monotonic()
        while watcher.table.route("tls-watch.test", "/") is None:
            assert time.monotonic() - changed < 1.0, "no notification within 1 s"
            await asyncio.sleep(0.02)
    finally:
        await watcher.aclose()
        await client.aclose()
