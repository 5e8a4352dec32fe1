"""Pure business rules of billing: no I/O, no clock; every time is passed in.

    pricing    SKUs, interop bands, quotes, purchase preconditions (docs/rules.md §1, §2, §7)
    refunds    the refund of an order's packages, gift re-charge included (docs/rules.md §6)
    calendar   package expiry and refund window on the business wall clock (docs/rules.md §1.1, §6)

Refusals are the `billing.errors` classes, each with a stable code.
"""
