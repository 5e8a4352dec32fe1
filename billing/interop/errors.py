"""Refusals of interop accounts, each a `billing.errors` class with its own stable code.

    BillingError (billing.errors)
    └── InteropError                base of this package's refusals
        ├── NoFreeAccount           422 interop_no_free_account: every active account is taken
        ├── MemberHoldsAccount      409 interop_member_assigned: the member holds one already
        └── MemberHoldsNoAccount    404 interop_member_not_assigned: nothing to free

Interop orders are refused by the purchase rules of `billing.rules.pricing`
(`TooManyAccounts`, `VoucherNotAllowed`, …) and their refunds by `InteropNotRefundable`.
"""

from __future__ import annotations

from billing.errors import BillingError, Conflict, NotFound, Refused


class InteropError(BillingError):
    """Base of the interop refusals."""


class NoFreeAccount(InteropError, Refused):
    code = "interop_no_free_account"

    def __init__(self, enterprise_id: str, active: int, assigned: int) -> None:
        self.active = active
        self.assigned = assigned
        super().__init__(
            f"enterprise {enterprise_id!r} holds {active} active interop accounts and "
            f"{assigned} are assigned: free one or buy a licence batch first"
        )


class MemberHoldsAccount(InteropError, Conflict):
    code = "interop_member_assigned"

    def __init__(self, userid: str) -> None:
        super().__init__(f"member {userid!r} holds an interop account already")


class MemberHoldsNoAccount(InteropError, NotFound):
    code = "interop_member_not_assigned"

    def __init__(self, userid: str) -> None:
        super().__init__(f"member {userid!r} holds no interop account")
