"""Interop accounts over the admin API (docs/architecture.md §6, docs/rules.md §1.2).

GET    /v1/enterprises/{id}/interop                    trial, batches, members, next expiry
POST   /v1/enterprises/{id}/interop                    an interop order (as POST /v1/orders)
PATCH  /v1/enterprises/{id}/interop                    ops: the trial's end and accounts
POST   /v1/enterprises/{id}/interop/members            assign an account to a member
DELETE /v1/enterprises/{id}/interop/members/{userid}   free a member's account
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, StrictBool, StrictInt, model_validator

from billing import operations
from billing.api import services
from billing.api.context import RequestContext
from billing.api.fields import WeComUserId
from billing.api.framework import Api, ApiModel, Id, Text, Timestamp
from billing.api.routes_orders import OrderOut, order_out
from billing.api.services import SETTINGS
from billing.interop import members
from billing.interop.accounts import AccountsView, read_view
from billing.interop.alerts import INTEROP_CAUSE
from billing.interop.records import MemberRow
from billing.interop.rules import INTEROP_SKU
from billing.interop.runtime import INTEROP

api = Api()


class TrialOut(ApiModel):
    starts_at: datetime
    ends_at: datetime
    accounts: int
    active: bool
    ends_at_set_by_ops: bool
    accounts_set_by_ops: bool


class BatchOut(ApiModel):
    id: str
    order_id: str
    accounts: int
    years: int
    valid_from: datetime
    valid_until: datetime
    active: bool


class MemberOut(ApiModel):
    enterprise_id: str
    userid: str
    assigned_at: datetime
    assigned_by: str
    released_at: datetime | None = None
    release_reason: str | None = None


class ExpiryOut(ApiModel):
    at: datetime
    ending: list[str] = Field(description="'trial' and/or the ids of the batches ending")
    accounts_before: int
    accounts_after: int


class InteropOut(ApiModel):
    enterprise_id: str
    at: datetime
    active_accounts: int
    assigned: int
    free: int
    trial: TrialOut
    batches: list[BatchOut]
    members: list[MemberOut] = Field(description="the members holding an account, in order")
    next_expiry: ExpiryOut | None


def _member(row: MemberRow) -> MemberOut:
    return MemberOut.model_validate(row, from_attributes=True)


def interop_out(view: AccountsView) -> InteropOut:
    state, at = view.state, view.at
    expiry = view.next_expiry
    return InteropOut(
        enterprise_id=view.enterprise.id,
        at=at,
        active_accounts=view.active,
        assigned=len(view.holding),
        free=max(0, view.active - len(view.holding)),
        trial=TrialOut(
            starts_at=view.trial.starts_at,
            ends_at=view.trial.ends_at,
            accounts=view.trial.accounts,
            active=view.trial.covers(at),
            ends_at_set_by_ops=state is not None and state.trial_ends_at is not None,
            accounts_set_by_ops=state is not None and state.trial_accounts is not None,
        ),
        batches=[
            BatchOut(
                **{k: getattr(b, k) for k in ("id", "order_id", "accounts", "years")},
                valid_from=b.valid_from,
                valid_until=b.valid_until,
                active=b.valid_from <= at < b.valid_until,
            )
            for b in view.batches
        ],
        members=[_member(m) for m in view.holding],
        next_expiry=None
        if expiry is None
        else ExpiryOut(
            at=expiry.at,
            ending=[p.ref for p in expiry.ending],
            accounts_before=expiry.count_before,
            accounts_after=expiry.count_after,
        ),
    )


@api.route(
    "GET",
    "/v1/enterprises/{enterprise_id}/interop",
    summary="Interop accounts: trial, licence batches, members, next expiry",
    response_model=InteropOut,
)
async def get_interop(ctx: RequestContext, body: None, enterprise_id: Id) -> InteropOut:
    """The active account count now, the members holding accounts (assignment order: the
    last assigned lose theirs first when the count drops), and the next end of a batch or
    of the trial with the count before and after it."""
    enterprise = await services.visible_enterprise(ctx, enterprise_id)
    runtime = ctx.app[INTEROP]
    async with ctx.db.engine.connect() as conn:
        view = await read_view(conn, enterprise, runtime.clock.now(), runtime.policy)
    return interop_out(view)


class InteropOrderIn(ApiModel):
    id_type: Literal["qidian", "wecom"]
    accounts: StrictInt = Field(ge=1, le=10_000_000, description="more than 10,000: refused")
    years: StrictInt = Field(default=1, ge=1, le=10)
    agreement_accepted: StrictBool = Field(description="must be true (docs/rules.md §2)")
    voucher: Text | None = Field(default=None, max_length=64)


@api.route(
    "POST",
    "/v1/enterprises/{enterprise_id}/interop",
    summary="Order interop accounts (as POST /v1/orders with sku wecom_interop)",
    status=201,
    request_model=InteropOrderIn,
    response_model=OrderOut,
    audit_action="order.create",
)
async def order_interop(ctx: RequestContext, body: InteropOrderIn, enterprise_id: Id) -> OrderOut:
    """A ``pending_payment`` order of a licence batch, priced in the configured mode; its
    payment (``POST /v1/orders/{id}/pay``) books the batch."""
    await services.visible_enterprise(ctx, enterprise_id)
    state = await operations.create_order(
        ctx.db,
        ctx.audit,
        operations.OrderRequest(
            enterprise_id=enterprise_id,
            id_type=body.id_type,
            sku=INTEROP_SKU,
            quantity=body.accounts,
            agreement_accepted=body.agreement_accepted,
            voucher=body.voucher,
            years=body.years,
            mode=ctx.app[SETTINGS].interop_pricing,
        ),
    )
    return order_out(state)


class TrialPatch(ApiModel):
    trial_ends_at: Timestamp | None = Field(default=None, description="the end WeCom reports")
    trial_accounts: StrictInt | None = Field(default=None, ge=0, le=10_000)
    reason: Text = Field(min_length=1, max_length=500)

    @model_validator(mode="after")
    def _something(self) -> TrialPatch:
        if self.trial_ends_at is None and self.trial_accounts is None:
            raise ValueError("nothing to change: give trial_ends_at or trial_accounts")
        return self


@api.route(
    "PATCH",
    "/v1/enterprises/{enterprise_id}/interop",
    summary="Set the trial's end (as WeCom reports it) and its accounts",
    request_model=TrialPatch,
    response_model=InteropOut,
    roles=("ops",),
    audit_action="interop.trial_update",
)
async def patch_interop(ctx: RequestContext, body: TrialPatch, enterprise_id: Id) -> InteropOut:
    """A count lowered now (fewer trial accounts, or an end at or before now) takes
    accounts from the members assigned last, at once."""
    await services.visible_enterprise(ctx, enterprise_id)
    runtime = ctx.app[INTEROP]
    view = await members.change_trial(
        ctx.db,
        ctx.audit,
        enterprise_id,
        members.TrialChange(
            ends_at=body.trial_ends_at, accounts=body.trial_accounts, reason=body.reason
        ),
        now=runtime.clock.now(),
        policy=runtime.policy,
    )
    await services.alerts_changed(ctx, enterprise_id, INTEROP_CAUSE)
    return interop_out(view)


class MemberIn(ApiModel):
    userid: WeComUserId = Field(description="the member's WeCom userid")


@api.route(
    "POST",
    "/v1/enterprises/{enterprise_id}/interop/members",
    summary="Assign an interop account to a member",
    status=201,
    request_model=MemberIn,
    response_model=MemberOut,
    audit_action="interop.member_assign",
)
async def assign_member(ctx: RequestContext, body: MemberIn, enterprise_id: Id) -> MemberOut:
    """Refused (``interop_no_free_account``) when every active account is assigned."""
    await services.visible_enterprise(ctx, enterprise_id)
    runtime = ctx.app[INTEROP]
    row = await members.assign_member(
        ctx.db,
        ctx.audit,
        enterprise_id,
        body.userid,
        actor=ctx.principal.actor,
        now=runtime.clock.now(),
        policy=runtime.policy,
    )
    await services.alerts_changed(ctx, enterprise_id, INTEROP_CAUSE)
    return _member(row)


@api.route(
    "DELETE",
    "/v1/enterprises/{enterprise_id}/interop/members/{userid}",
    summary="Free a member's interop account",
    response_model=MemberOut,
    audit_action="interop.member_free",
)
async def free_member(
    ctx: RequestContext, body: None, enterprise_id: Id, userid: WeComUserId
) -> MemberOut:
    """The account is free for another member at once."""
    await services.visible_enterprise(ctx, enterprise_id)
    runtime = ctx.app[INTEROP]
    row = await members.free_member(
        ctx.db,
        ctx.audit,
        enterprise_id,
        userid,
        now=runtime.clock.now(),
        policy=runtime.policy,
    )
    await services.alerts_changed(ctx, enterprise_id, INTEROP_CAUSE)
    return _member(row)
