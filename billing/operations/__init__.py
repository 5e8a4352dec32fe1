"""Business operations (docs/rules.md §2, §3): enterprises, orders, payments, gifts,
adjustments, invoices.  Each is one ledger transaction with its audit row; those that
change balances then write through to Redis with idempotent scripts, so that a retry after
a crash between the two completes the work instead of doing it twice.

By subject: `enterprises` (register, verify, flag, suspend), `orders` (orders, payments,
invoices), `gifts` (gifts and bucket adjustments), `ids` (ids, idempotent ids).  Every
name is importable from ``billing.operations`` too.
"""

from billing.operations.enterprises import (
    ENTERPRISE_FLAGS,
    NewEnterprise,
    register_enterprise,
    update_enterprise,
)
from billing.operations.gifts import adjust_bucket, grant_gift
from billing.operations.ids import id_from_key, new_id
from billing.operations.orders import (
    OrderRequest,
    create_order,
    credit_packages,
    invoice_event,
    package_id,
    pay_order,
)

__all__ = [
    "ENTERPRISE_FLAGS",
    "NewEnterprise",
    "OrderRequest",
    "adjust_bucket",
    "create_order",
    "credit_packages",
    "grant_gift",
    "id_from_key",
    "invoice_event",
    "new_id",
    "package_id",
    "pay_order",
    "register_enterprise",
    "update_enterprise",
]
