"""``GET /v1/enterprises/{id}/usage`` adds up to Redis's ``used`` once reconciled.

A gateway worker killed before its last flush leaves PV that Redis counted and the stream
never delivered; a reconciliation pass books them, and a refund books the gift PV it
charged again.  The usage the API reports shows both, as rows with their ``source``, so
that summed per bucket it equals the bucket's ``used`` in the balance — on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from billing.reconcile import reconcile
from billing.schema import reconciliations
from billing.schema import usage as usage_table
from metering import BalanceStore
from metering.usage import UsageRecorder
from tests.admin_api.conftest import ENT_A, GIFT_PV, AdminServer, expect

USAGE = f"/v1/enterprises/{ENT_A}/usage"


async def usage(server: AdminServer, **params: str) -> list[dict[str, Any]]:
    body = expect(await server.ops("GET", USAGE, params=params), 200)
    items: list[dict[str, Any]] = body["items"]
    return items


def per_bucket(items: list[dict[str, Any]]) -> dict[str, int]:
    totals: Counter[str] = Counter()
    for item in items:
        totals[item["bucket_id"]] += item["pv"]
    return dict(totals)


def per_source(items: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    totals: Counter[tuple[str, str]] = Counter()
    for item in items:
        totals[(item["bucket_id"], item["source"])] += item["pv"]
    return dict(totals)


async def redis_used(server: AdminServer) -> dict[str, int]:
    return {b["id"]: b["used"] for b in (await server.balance(ENT_A))["buckets"] if b["used"]}


async def streamed(server: AdminServer, pv: int) -> None:
    """Wait until the app's usage consumer has booked ``pv`` PV of ENT_A."""
    deadline = time.monotonic() + 10
    while sum(per_bucket(await usage(server)).values()) != pv:
        assert time.monotonic() < deadline, await usage(server)
        await asyncio.sleep(0.05)


async def killed_worker_then_refund(admin: AdminServer) -> tuple[str, str]:
    """1,500 PV reported, 70 more never flushed, then order A refunded: (gift, package)."""
    assert admin.seed is not None
    gift_id = admin.seed.gift_a["id"]
    package_id = admin.seed.order_a["packages"][0]["id"]
    store = BalanceStore(admin.redis)
    recorder = UsageRecorder(admin.redis, "gw-killed")
    debit = await store.debit(ENT_A, 1_500)
    assert dict(debit.takes) == {gift_id: GIFT_PV, package_id: 500}
    for bucket_id, n in debit.takes:
        recorder.record(ENT_A, bucket_id, n)
    await recorder.flush()
    await streamed(admin, 1_500)
    assert (await store.debit(ENT_A, 70)).granted == 70  # recorded by a worker, then kill -9
    body = {"order_id": admin.seed.order_a["id"], "package_ids": [package_id]}
    refund = expect(await admin.ops("POST", "/v1/refunds", body), 201)
    assert refund["lines"][0]["recharged_pv"] == GIFT_PV
    return gift_id, package_id


async def test_usage_per_bucket_equals_redis_used_after_a_reconciliation_pass(
    admin: AdminServer,
):
    gift_id, package_id = await killed_worker_then_refund(admin)
    assert await redis_used(admin) == {gift_id: GIFT_PV, package_id: 1_570}
    before = await usage(admin, granularity="hour")
    assert per_bucket(before) == {gift_id: GIFT_PV, package_id: 1_500}  # 70 short

    booked = await reconcile(admin.db, BalanceStore(admin.redis), settle=0.1)
    assert [(d.bucket_id, d.delta) for d in booked] == [(package_id, 70)]

    for granularity in ("hour", "day"):
        items = await usage(admin, granularity=granularity)
        assert per_bucket(items) == await redis_used(admin), granularity
        assert per_source(items) == {
            (gift_id, "stream"): GIFT_PV,
            (package_id, "stream"): 500,
            (package_id, "reconciliation"): 70,
            (package_id, "recharge"): GIFT_PV,
        }, granularity
    # A second pass finds nothing more to book: the figures stay put.
    assert await reconcile(admin.db, BalanceStore(admin.redis), settle=0.1) == []
    assert per_bucket(await usage(admin)) == await redis_used(admin)


async def test_booked_usage_counts_in_the_hour_it_was_booked(sqlite_admin: AdminServer):
    _gift_id, package_id = await killed_worker_then_refund(sqlite_admin)
    await reconcile(sqlite_admin.db, BalanceStore(sqlite_admin.redis), settle=0.1)
    async with sqlite_admin.db.engine.connect() as conn:
        made = (await conn.execute(sa.select(reconciliations.c.created_at))).scalars().all()
    hours = {at.replace(minute=0, second=0, microsecond=0) for at in made}
    items = await usage(sqlite_admin, granularity="hour")
    booked = [i for i in items if i["source"] != "stream"]
    assert sorted((i["source"], i["pv"]) for i in booked) == [
        ("recharge", GIFT_PV),
        ("reconciliation", 70),
    ]
    assert {datetime.fromisoformat(i["period"]) for i in booked} <= hours
    assert all(i["bucket_id"] == package_id for i in booked)

    # The window selects hours, whatever the source: from the next hour on, nothing.
    latest = max(hours)
    assert datetime.now(UTC) - latest < timedelta(hours=2)
    until = (latest + timedelta(hours=3)).isoformat()
    later = await usage(sqlite_admin, since=(latest + timedelta(hours=1)).isoformat(), until=until)
    assert later == []
    # Up to the start of the first booking hour: no booked row (stream rows may remain).
    earlier = await usage(sqlite_admin, until=min(hours).isoformat(), granularity="hour")
    assert all(i["source"] == "stream" for i in earlier)
    # A `since` inside the hour leaves that hour out, as for stream usage.
    since = (latest + timedelta(minutes=1)).isoformat()
    inside = await usage(sqlite_admin, since=since, until=until, granularity="hour")
    assert not [i for i in inside if datetime.fromisoformat(i["period"]) == latest]
    # The whole hour, given exactly, has them all.
    exact = await usage(sqlite_admin, since=latest.isoformat(), until=until, granularity="hour")
    expected = {
        (i["source"], i["pv"]) for i in booked if datetime.fromisoformat(i["period"]) == latest
    }
    assert expected
    assert {(i["source"], i["pv"]) for i in exact if i["source"] != "stream"} == expected


async def test_the_usage_document_describes_the_sources(sqlite_admin: AdminServer):
    document = expect(await sqlite_admin.api.call("GET", "/openapi.json", None), 200)
    operation = document["paths"]["/v1/enterprises/{enterprise_id}/usage"]["get"]
    assert "reconciliation" in operation["description"]
    assert "recharge" in operation["description"]
    row = document["components"]["schemas"]["UsageRow"]
    assert row["properties"]["source"]["enum"] == ["stream", "reconciliation", "recharge"]
    assert "source" in row["required"]


async def test_days_are_the_business_timezones(sqlite_admin: AdminServer):
    """Days run from midnight to midnight in the business timezone (Asia/Shanghai by
    default, UTC+8): 15:00 and 16:00 UTC of one UTC day are two days there."""
    async with sqlite_admin.db.begin() as conn:
        for hour, pv in ((15, 3), (16, 4)):
            at = datetime(2027, 1, 1, hour, tzinfo=UTC)
            await conn.execute(
                usage_table.insert().values(enterprise_id=ENT_A, bucket_id="b", hour=at, pv=pv)
            )
    window = {"since": "2027-01-01T00:00:00Z", "until": "2027-01-03T00:00:00Z"}
    days = await usage(sqlite_admin, granularity="day", **window)
    assert [(i["period"], i["pv"]) for i in days] == [
        ("2027-01-01T00:00:00+08:00", 3),
        ("2027-01-02T00:00:00+08:00", 4),
    ]
    hours = await usage(sqlite_admin, granularity="hour", **window)
    assert [datetime.fromisoformat(i["period"]).hour for i in hours] == [15, 16]  # UTC
