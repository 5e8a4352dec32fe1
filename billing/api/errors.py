"""Refusals of the admin API's own layer (auth, routing, idempotency), on top of billing's.

Business routes raise `billing.errors` classes; these are the ones the HTTP layer itself
needs.  Every one is a `BillingError`, so one mapping renders all of them as
``{"error": {"code", "message"}}`` with the class's ``http_status``.

    BillingError (billing.errors)
    ├── ValidationFailed            400 invalid_request  (billing.errors; bodies, params, keys)
    ├── MalformedRequest            400 malformed_request  the HTTP parser refused the request
    │   ├── RequestLineTooLong      414 uri_too_long
    │   └── HeaderTooLarge          431 header_too_large
    ├── Unauthorized                401 unauthorized     missing, unknown or revoked token
    ├── Forbidden                   403 forbidden        the route is not for this role
    ├── NotFound                    404 not_found        (billing.errors; also other tenants)
    ├── MethodNotAllowed            405 method_not_allowed
    ├── PayloadTooLarge             413 payload_too_large
    ├── Conflict                    409 conflict         (billing.errors)
    │   ├── IdempotencyKeyReused        idempotency_key_reused: same key, other request
    │   ├── IdempotencyKeyInProgress    idempotency_key_in_progress: first one still running
    │   └── StoreConflict               a unique or foreign-key constraint refused a write
    ├── InternalError               500 internal_error   a bug: logged with its request id
    └── Unavailable                 503 unavailable      the ledger database cannot be reached
"""

from __future__ import annotations

from billing.errors import BillingError, Conflict


class MalformedRequest(BillingError):
    code = "malformed_request"
    http_status = 400
    default_message = "the request is not well-formed HTTP"


class RequestLineTooLong(MalformedRequest):
    code = "uri_too_long"
    http_status = 414
    default_message = "the request line (method, path and query) is too long"


class HeaderTooLarge(MalformedRequest):
    code = "header_too_large"
    http_status = 431
    default_message = "a request header is too large"


class Unauthorized(BillingError):
    code = "unauthorized"
    http_status = 401
    default_message = "a valid bearer token is required"


class Forbidden(BillingError):
    code = "forbidden"
    http_status = 403
    default_message = "this token's role may not use this route"


class MethodNotAllowed(BillingError):
    code = "method_not_allowed"
    http_status = 405
    default_message = "method not allowed on this route"


class PayloadTooLarge(BillingError):
    code = "payload_too_large"
    http_status = 413
    default_message = "request body too large"


class IdempotencyKeyReused(Conflict):
    code = "idempotency_key_reused"
    default_message = "this Idempotency-Key was already used with a different request"


class IdempotencyKeyInProgress(Conflict):
    code = "idempotency_key_in_progress"
    default_message = "a request with this Idempotency-Key is still being processed; retry later"


class StoreConflict(Conflict):
    default_message = "the request conflicts with data that already exists"


class InternalError(BillingError):
    code = "internal_error"
    http_status = 500
    default_message = "internal error"


class Unavailable(BillingError):
    code = "unavailable"
    http_status = 503
    default_message = "the ledger database is unavailable; retry later"
