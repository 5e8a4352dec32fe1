"""The admin HTTP API (docs/architecture.md §6): declarative routes, tokens, idempotency, audit.

Modules: `framework` (Api, routes, ApiModel), `parsing` (parameters and bodies into models),
`context` (RequestContext, app keys), `services` (the business routes' app keys), `auth`
(tokens, principals, scope), `idempotency`, `openapi`, `audit_routes`, `app`
(create_admin_app), `edge` (JSON errors, request ids), `errors`.
"""
