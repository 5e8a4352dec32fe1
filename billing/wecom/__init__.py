"""WeCom event callbacks, received and relayed (docs/rules.md §1.2, docs/architecture.md §5).

    crypto     WeCom's callback scheme: msg_signature, AES-256-CBC (with `cryptography`)
    messages   the XML envelope and the decrypted event, parsed without a DTD
    config     an enterprise's callback token, EncodingAESKey, corp id, relay target, secret
    events     storing each event, de-duplication, and the relay decision
    relay      an accepted event as a signed delivery through the alerts' outbox
    callback   the public route GET/POST /wecom/callback/{enterprise_id}: limits, auth
    ratelimit  the token buckets in front of it
    metrics    pvgate_wecom_events_total{result}
    routes     the admin API routes: PUT/GET …/wecom, GET …/wecom/events
    sender     ``pvgate wecom-send``: WeCom's side, once, against a running billing

The rows and tables are `billing.interop`'s (`records`, `tables`).
"""
