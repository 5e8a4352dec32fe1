"""Builders shared by the billing tests: enterprises, paid orders, ledger queries."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from redis.asyncio import Redis

from billing.audit import Auditor
from billing.db import Database
from billing.errors import BillingError
from billing.ledger import OrderState
from billing.operations import (
    NewEnterprise,
    OrderRequest,
    create_order,
    pay_order,
    register_enterprise,
)
from billing.refunding import RefundResult, execute
from billing.rows import EnterpriseRow
from metering import BalanceStore
from pvgate.embedded import free_port

TZ = "Asia/Shanghai"
ENT = "ent1"


def now() -> datetime:
    return datetime.now(UTC)


async def enterprise(
    db: Database,
    audit: Auditor,
    enterprise_id: str = ENT,
    *,
    id_type: str = "wecom",
    industry: str = "retail",
    verified: bool = True,
) -> EnterpriseRow:
    return await register_enterprise(
        db,
        audit,
        NewEnterprise(
            id=enterprise_id,
            id_type=id_type,
            name=f"{enterprise_id} Ltd",
            industry=industry,
            verified=verified,
        ),
    )


def order_request(enterprise_id: str = ENT, **overrides: Any) -> OrderRequest:
    fields: dict[str, Any] = {
        "enterprise_id": enterprise_id,
        "id_type": "wecom",
        "sku": "pv_1m",
        "quantity": 1,
        "agreement_accepted": True,
        **overrides,
    }
    return OrderRequest(**fields)


async def paid_order(
    db: Database,
    store: BalanceStore,
    audit: Auditor,
    enterprise_id: str = ENT,
    *,
    sku: str = "pv_1m",
    quantity: int = 1,
    paid_at: datetime | None = None,
) -> OrderState:
    """An order created and paid (``paid_at`` defaults to a day ago: inside every window)."""
    order = await create_order(db, audit, order_request(enterprise_id, sku=sku, quantity=quantity))
    return await pay_order(
        db,
        store,
        audit,
        order.order.id,
        reference=f"pay-{order.order.id}",
        paid_at=paid_at or now() - timedelta(days=1),
        tz=TZ,
    )


async def rows(db: Database, table: sa.Table, **where: Any) -> list[dict[str, Any]]:
    query = sa.select(table).where(*(table.c[k] == v for k, v in where.items()))
    async with db.engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(query)).mappings()]


async def count(db: Database, table: sa.Table, **where: Any) -> int:
    return len(await rows(db, table, **where))


async def usage_by_bucket(db: Database) -> dict[str, int]:
    """``SELECT bucket_id, SUM(pv) FROM usage GROUP BY bucket_id``."""
    from billing.schema import usage

    query = sa.select(usage.c.bucket_id, sa.func.sum(usage.c.pv)).group_by(usage.c.bucket_id)
    async with db.engine.connect() as conn:
        return {row[0]: int(row[1]) for row in await conn.execute(query)}


async def redis_used(store: BalanceStore, enterprise_id: str = ENT) -> dict[str, int]:
    """Every bucket's ``used`` in Redis, zeros left out (the ledger has no row for them)."""
    snapshot = await store.snapshot(enterprise_id)
    return {b.id: b.used for b in snapshot.buckets if b.used}


def nonzero(totals: Mapping[str, int]) -> dict[str, int]:
    return {k: v for k, v in totals.items() if v}


def dead_redis() -> Redis:
    """A client of a loopback port nothing listens on: every call fails to connect."""
    return Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)


class Killed(BaseException):
    """Raised by crash injections: like a kill, no ``except Exception`` stops it."""


async def stream_entries(redis: Redis, name: str) -> list[tuple[str, dict[str, str]]]:
    """XRANGE of a whole stream, typed as a ``decode_responses`` client answers."""
    found: Any = await redis.xrange(name)
    return [(str(entry_id), dict(fields)) for entry_id, fields in found]


async def xadd(redis: Redis, name: str, fields: Mapping[str, Any]) -> str:
    entry: dict[Any, Any] = dict(fields)
    entry_id: Any = await redis.xadd(name, entry)
    return str(entry_id)


async def code_of(call: Awaitable[Any]) -> str:
    """The ``code`` of the billing error ``call`` raises (it must raise one)."""
    with pytest.raises(BillingError) as info:
        await call
    return info.value.code


# Refunds ---------------------------------------------------------------------------------

LINE_FIELDS = ("package_id", "paid_cash_fen", "used_before", "recharged_pv", "used_after")


def booked_lines(result: RefundResult) -> list[tuple[Any, ...]]:
    """A refund's lines as tuples: `LINE_FIELDS`, then ``refund_fen``."""
    return [(*(getattr(line, f) for f in LINE_FIELDS), line.refund_fen) for line in result.lines]


async def debit_counted(store: BalanceStore, pv: int, chunk: int = 250_000) -> Counter[str]:
    """Debit ``pv`` PV of `ENT` through the metering script; what each bucket gave."""
    takes: Counter[str] = Counter()
    while pv:
        debit = await store.debit(ENT, min(chunk, pv))
        assert debit.granted == min(chunk, pv), debit
        takes.update(dict(debit.takes))
        pv -= debit.granted
    return takes


def refund(
    db: Database,
    store: BalanceStore,
    audit: Auditor,
    state: OrderState,
    ids: list[str],
    key: str = "refund-1",
) -> Awaitable[RefundResult]:
    """`billing.refunding.execute` of the order's packages ``ids`` now, as ops1."""
    return execute(db, store, audit, state.order.id, ids, key=key, actor="ops1", now=now(), tz=TZ)
