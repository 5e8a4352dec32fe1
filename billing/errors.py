"""Errors raised by billing: every refusal a caller can be told about, with a stable code.

Each class carries a machine ``code`` (stable: API clients branch on it) and the HTTP status
the admin API answers with; each instance carries a human ``message``.  The API renders
``{"error": {"code": ..., "message": ...}}``.  Database and Redis errors never leave billing
as themselves: they are translated at the edge with ``raise ... from exc``.

    BillingError                    base of everything below (500 unless a subclass says)
    ├── ValidationFailed        400 invalid_request: a field is missing, malformed or unknown
    ├── Refused                 422 a business rule says no (docs/rules.md §1, §2, §6)
    │   ├── AgreementNotAccepted      agreement_not_accepted
    │   ├── VoucherNotAllowed         voucher_not_allowed
    │   ├── EnterpriseNotVerified     enterprise_not_verified
    │   ├── RestrictedIndustry        restricted_industry
    │   ├── TooManyAccounts           interop_quantity_exceeds_self_service
    │   ├── RefundWindowClosed        refund_window_closed
    │   ├── InteropNotRefundable      interop_not_refundable
    │   ├── InvoiceNotReturned        invoice_not_returned
    │   └── EnterpriseFlagged         enterprise_flagged
    ├── NotFound                404 not_found (also for another tenant's objects)
    └── Conflict                409 conflict: the state changed, or a key was reused
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar


class BillingError(Exception):
    """Base class of every billing error."""

    code: ClassVar[str] = "billing_error"
    http_status: ClassVar[int] = 500
    default_message: ClassVar[str] = "billing failed"

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)


class ValidationFailed(BillingError, ValueError):
    """A request field is missing, has the wrong type, or names something that does not exist."""

    code = "invalid_request"
    http_status = 400
    default_message = "invalid request"

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class Refused(BillingError):
    """A well-formed request that a business rule refuses."""

    code = "refused"
    http_status = 422
    default_message = "refused by a business rule"


class AgreementNotAccepted(Refused):
    code = "agreement_not_accepted"
    default_message = "the service agreement must be accepted (agreement_accepted: true)"


class VoucherNotAllowed(Refused):
    code = "voucher_not_allowed"
    default_message = "vouchers cannot be used to buy PV packages or interop accounts"


class EnterpriseNotVerified(Refused):
    code = "enterprise_not_verified"
    default_message = "the enterprise has not completed its real-name verification"


class RestrictedIndustry(Refused):
    code = "restricted_industry"

    def __init__(self, industry: str) -> None:
        self.industry = industry
        super().__init__(f"industry {industry!r} may not buy this service")


class TooManyAccounts(Refused):
    code = "interop_quantity_exceeds_self_service"

    def __init__(self, accounts: int, limit: int) -> None:
        self.accounts = accounts
        self.limit = limit
        super().__init__(
            f"{accounts} interop accounts in one purchase: self-service sells at most {limit};"
            " contact sales"
        )


class RefundWindowClosed(Refused):
    code = "refund_window_closed"

    def __init__(self, order_id: str, window_end: datetime) -> None:
        self.order_id = order_id
        self.window_end = window_end
        super().__init__(f"order {order_id}: the refund window closed at {window_end.isoformat()}")


class InteropNotRefundable(Refused):
    code = "interop_not_refundable"
    default_message = "interop accounts are never refunded"


class InvoiceNotReturned(Refused):
    code = "invoice_not_returned"

    def __init__(self, order_id: str) -> None:
        self.order_id = order_id
        super().__init__(
            f"order {order_id} has an invoice issued: return the invoice before a refund"
        )


class EnterpriseFlagged(Refused):
    code = "enterprise_flagged"
    default_message = (
        "the enterprise is flagged for suspected abuse or a breach of the service agreement"
    )


class NotFound(BillingError):
    code = "not_found"
    http_status = 404
    default_message = "not found"


class Conflict(BillingError):
    code = "conflict"
    http_status = 409
    default_message = "conflict with the current state"
