"""Refund quotes and their execution (docs/rules.md §6) against the ledger and Redis.

Execution, each step safe to repeat with the same idempotency key:

1. the refund is quoted on live figures (any refusal stops here) and its request row is
   committed under the key, with the gifts the quote found still live;
2. in Redis, those gifts are voided and their used PV charged again to the live packages,
   then any other gift of the order (the scripts answer the same on a retry), then the
   refunded packages are frozen — their final ``used`` read in the same atomic step that
   stops them;
3. the lines — by `refund_line`, the quote's rule, on the frozen ``used`` and the
   re-charge of the gifts recorded in step 1 — the re-charges, the completion and the
   credit to the payer's balance are booked in one transaction, unless a completion
   exists already.

A crash anywhere is recovered by retrying with the same key: steps 2 and 3 are idempotent,
and the booking happens once, so nothing is ever refunded twice.  A gift that an earlier
refund voided is not this refund's: the PV it re-charged are in the packages' ``used``
already, as the quote showed them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.audit import Auditor
from billing.db import Database
from billing.errors import Conflict, InteropNotRefundable, ValidationFailed
from billing.ledger import RECHARGE_ID_PREFIX, OrderState, get_enterprise, get_order
from billing.operations import new_id
from billing.rows import EnterpriseRow, RefundLineRow, RefundRequestRow
from billing.rules.calendar import Zone
from billing.rules.refunds import (
    EnterpriseState,
    GiftState,
    OrderKind,
    PackageState,
    RefundLine,
    RefundOrder,
    RefundQuote,
    quote_refund,
    refund_line,
)
from billing.schema import (
    balance_entries,
    reconciliations,
    refund_completions,
    refund_lines,
    refunds,
)
from metering import BalanceStore
from metering.buckets import Bucket, BucketKind, BucketStatus, Snapshot, from_ms


def _package_state(bucket: Bucket, now_ms: int) -> PackageState:
    return PackageState(
        id=bucket.id,
        granted=bucket.granted,
        used=bucket.used,
        ordered_at=from_ms(bucket.ordered_at),
        expired=now_ms >= bucket.expires_at,
        refunded=bucket.status is not BucketStatus.ACTIVE,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class RefundInputs:
    """What `quote_refund` is given: the order, its enterprise and their live buckets."""

    order: RefundOrder
    enterprise: EnterpriseState
    packages: tuple[PackageState, ...]
    gifts: tuple[GiftState, ...]
    other_packages: tuple[PackageState, ...]

    @classmethod
    def gather(
        cls, state: OrderState, enterprise: EnterpriseRow, snapshot: Snapshot
    ) -> RefundInputs:
        """The ledger's order and enterprise with the figures of Redis's ``snapshot``."""
        if state.payment is None:
            raise Conflict(f"order {state.order.id!r} is not paid: nothing to refund")
        buckets = {b.id: b for b in snapshot.buckets}
        mine = {p.id for p in state.packages}
        missing = mine - set(buckets)
        if missing:
            raise Conflict(f"packages {sorted(missing)} of the order have no bucket in Redis yet")
        return cls(
            order=RefundOrder(
                order_id=state.order.id,
                paid_at=state.payment.paid_at,
                cash_fen=state.payment.cash_fen,
                voucher_fen=state.order.voucher_fen,
                invoice=state.invoice,
                kind=OrderKind(state.order.kind),
            ),
            enterprise=EnterpriseState(enterprise_id=enterprise.id, flagged=enterprise.flagged),
            packages=tuple(_package_state(buckets[p.id], snapshot.now) for p in state.packages),
            gifts=tuple(
                GiftState(
                    id=g.id,
                    used=buckets[g.id].used,
                    void=buckets[g.id].status is BucketStatus.VOID,
                )
                for g in state.gifts
                if g.id in buckets
            ),
            other_packages=tuple(
                _package_state(b, snapshot.now)
                for b in snapshot.buckets
                if b.kind is BucketKind.PACKAGE and b.id not in mine
            ),
        )

    def quote(self, requested: Sequence[str], *, now: datetime, tz: Zone) -> RefundQuote:
        return quote_refund(
            order=self.order,
            enterprise=self.enterprise,
            packages=self.packages,
            gifts=self.gifts,
            other_packages=self.other_packages,
            requested=requested,
            now=now,
            tz=tz,
        )


async def quote(
    db: Database,
    store: BalanceStore,
    order_id: str,
    package_ids: list[str],
    *,
    now: datetime,
    tz: Zone,
) -> RefundQuote:
    """What refunding these packages would give now, or the refusal."""
    async with db.engine.connect() as conn:
        state = await get_order(conn, order_id)
        enterprise = await get_enterprise(conn, state.order.enterprise_id)
    if state.order.kind == OrderKind.INTEROP:  # paid or not, before anything else (§6)
        raise InteropNotRefundable()
    if state.payment is None:
        raise Conflict(f"order {order_id!r} is not paid: nothing to refund")
    snapshot = await store.snapshot(enterprise.id)
    return RefundInputs.gather(state, enterprise, snapshot).quote(package_ids, now=now, tz=tz)


@dataclass(frozen=True, slots=True, kw_only=True)
class RefundResult:
    refund_id: str
    order_id: str
    enterprise_id: str
    package_ids: tuple[str, ...]
    lines: tuple[RefundLineRow, ...]
    total_refund_fen: int
    completed_at: datetime


async def execute(
    db: Database,
    store: BalanceStore,
    audit: Auditor,
    order_id: str,
    package_ids: list[str],
    *,
    key: str,
    actor: str,
    now: datetime,
    tz: Zone,
) -> RefundResult:
    """Refund the packages once per idempotency key (see the module docstring)."""
    if len(set(package_ids)) != len(package_ids):
        raise ValidationFailed("package_ids", "a package is listed more than once")
    request = await _existing_request(db, key)
    if request is None:
        quoted = await quote(db, store, order_id, package_ids, now=now, tz=tz)  # refusals
        try:
            request = await _start(db, key, order_id, package_ids, quoted.voided_gifts, actor, now)
        except sa.exc.IntegrityError:
            # The same key raced in concurrently and started first: carry on from it.
            request = await _existing_request(db, key)
            if request is None:
                raise
    elif request.order_id != order_id or sorted(request.package_ids) != sorted(package_ids):
        raise Conflict(f"idempotency key {key!r} was used for another refund")
    completed = await _booked(db, request.id)
    if completed is not None:
        return completed
    async with db.engine.connect() as conn:
        state = await get_order(conn, order_id)
    own, order_wide, final_used = await _void_and_freeze(store, state, request)
    lines = _lines(state, request.package_ids, final_used, own)
    try:
        await _book(db, audit, request, state, lines, order_wide)
    except sa.exc.IntegrityError:
        # A concurrent execution of the same refund booked it first; its booking stands.
        if await _booked(db, request.id) is None:
            raise
    booked = await _booked(db, request.id)
    assert booked is not None
    return booked


async def _void_and_freeze(
    store: BalanceStore, state: OrderState, request: RefundRequestRow
) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """Step 2: per package, (this refund's re-charge, the order's gifts', final ``used``).

    The gifts the request found live are voided first and alone, so that the script's
    answer — the same on a retry — is the re-charge of those only.  Then every gift of the
    order: one granted since, or voided by a request that crashed before booking, whose
    re-charge the ledger must hold all the same.
    """
    enterprise_id = state.order.enterprise_id
    every_gift = [g.id for g in state.gifts]
    own_gifts = every_gift if request.voided_gifts is None else request.voided_gifts
    own = await store.void_gifts(enterprise_id, own_gifts, recharge=True) if own_gifts else None
    order_wide = await store.void_gifts(enterprise_id, every_gift, recharge=True)
    final_used = await store.freeze(enterprise_id, request.package_ids)
    return (own.recharged if own else {}), order_wide.recharged, final_used


async def _existing_request(db: Database, key: str) -> RefundRequestRow | None:
    async with db.engine.connect() as conn:
        row = (
            await conn.execute(sa.select(refunds).where(refunds.c.idempotency_key == key))
        ).first()
    return None if row is None else RefundRequestRow.from_row(row)


async def _start(
    db: Database,
    key: str,
    order_id: str,
    package_ids: list[str],
    voided_gifts: Sequence[str],
    actor: str,
    now: datetime,
) -> RefundRequestRow:
    async with db.engine.connect() as conn:
        state = await get_order(conn, order_id)
    request = RefundRequestRow(
        id=new_id("ref"),
        idempotency_key=key,
        order_id=order_id,
        enterprise_id=state.order.enterprise_id,
        package_ids=tuple(package_ids),
        voided_gifts=tuple(voided_gifts),
        actor=actor,
        created_at=now,
    )
    values = dataclasses.asdict(request)
    values.update(package_ids=list(package_ids), voided_gifts=list(voided_gifts))  # JSON arrays
    async with db.begin() as conn:
        await conn.execute(refunds.insert().values(**values))
    return request


def _lines(
    state: OrderState,
    package_ids: Sequence[str],
    final_used: Mapping[str, int],
    recharged: Mapping[str, int],
) -> list[RefundLine]:
    """The quote's rule on the frozen figures: ``used`` before = final ``used`` − re-charge."""
    paid_cash = {p.id: p.paid_cash_fen for p in state.packages}
    return [
        refund_line(
            package_id,
            paid_cash[package_id],
            final_used[package_id] - recharged.get(package_id, 0),
            recharged.get(package_id, 0),
        )
        for package_id in sorted(package_ids)
    ]


async def _book(
    db: Database,
    audit: Auditor,
    request: RefundRequestRow,
    state: OrderState,
    refund: list[RefundLine],
    recharged: Mapping[str, int],
) -> None:
    """Step 3, once: the lines, the re-charges, the completion and the payer's credit."""
    lines = [
        RefundLineRow(
            refund_id=request.id,
            package_id=line.package_id,
            paid_cash_fen=line.paid_cash_fen,
            used_before=line.used_before,
            recharged_pv=line.recharged_pv,
            used_after=line.used_after,
            refund_fen=line.refund_fen,
        )
        for line in refund
    ]
    total = sum(line.refund_fen for line in lines)
    now = datetime.now(UTC)
    enterprise_id = state.order.enterprise_id
    async with db.begin() as conn:
        if await _completed(conn, request.id):
            return
        await _check_not_taken(conn, request.id, [line.package_id for line in lines])
        await conn.execute(refund_lines.insert(), [dataclasses.asdict(line) for line in lines])
        await _book_recharges(conn, state, recharged, now)
        await conn.execute(
            refund_completions.insert().values(
                refund_id=request.id, total_fen=total, completed_at=now
            )
        )
        await conn.execute(
            balance_entries.insert().values(
                id=new_id("bal"),
                enterprise_id=enterprise_id,
                amount_fen=total,
                kind="refund",
                reference=request.id,
                created_at=now,
            )
        )
        after = {"refund_id": request.id, "order_id": state.order.id, "lines": lines}
        await audit(conn, "refund.execute", enterprise_id, None, after | {"total_fen": total})


async def _completed(conn: AsyncConnection, refund_id: str) -> bool:
    found = await conn.scalar(
        sa.select(refund_completions.c.refund_id).where(refund_completions.c.refund_id == refund_id)
    )
    return found is not None


async def _check_not_taken(conn: AsyncConnection, refund_id: str, package_ids: list[str]) -> None:
    # A package is refunded once, whatever the keys: another request (a new key after a
    # failure, or a concurrent one) may have booked it since this one was quoted.
    taken = await conn.scalar(
        sa.select(refund_lines.c.package_id).where(
            refund_lines.c.package_id.in_(package_ids), refund_lines.c.refund_id != refund_id
        )
    )
    if taken is not None:
        raise Conflict(f"package {taken!r} was refunded by another request already")


async def _book_recharges(
    conn: AsyncConnection, state: OrderState, recharged: Mapping[str, int], now: datetime
) -> None:
    """The gifts' used PV, charged again to packages, enters the ledger's usage once."""
    order = state.order
    for package_id, pv in recharged.items():
        row_id = f"{RECHARGE_ID_PREFIX}{order.id}.{package_id}"[:64]
        if await conn.scalar(sa.select(reconciliations.c.id).where(reconciliations.c.id == row_id)):
            continue
        await conn.execute(
            reconciliations.insert().values(
                id=row_id,
                enterprise_id=order.enterprise_id,
                bucket_id=package_id,
                ledger_used=0,
                redis_used=0,
                delta_pv=pv,
                created_at=now,
                reason=f"gift PV of order {order.id} charged again at its refund",
            )
        )


async def _booked(db: Database, refund_id: str) -> RefundResult | None:
    async with db.engine.connect() as conn:
        done = (
            await conn.execute(
                sa.select(refund_completions).where(refund_completions.c.refund_id == refund_id)
            )
        ).first()
        if done is None:
            return None
        request = (await conn.execute(sa.select(refunds).where(refunds.c.id == refund_id))).one()
        lines = await conn.execute(
            sa.select(refund_lines)
            .where(refund_lines.c.refund_id == refund_id)
            .order_by(refund_lines.c.package_id)
        )
        return RefundResult(
            refund_id=refund_id,
            order_id=request.order_id,
            enterprise_id=request.enterprise_id,
            package_ids=tuple(request.package_ids),
            lines=tuple(RefundLineRow.from_row(r) for r in lines),
            total_refund_fen=done.total_fen,
            completed_at=done.completed_at,
        )
