"""One call per route of the authorization matrix (test_authorization.py), made ready as ops.

Each `PREPARE` entry makes, as ops, what its call needs — fresh objects for a call that
changes state (a pending order to pay, a paid one to invoice or refund…) — so the matrix's
cases do not depend on each other, and returns the `Call` every caller then makes.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tests.admin_api.conftest import DEAD_ORIGIN, ENT_A, PARTNER_A, SITE_A, AdminServer, Seed


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    json: Any = None
    params: dict[str, str] | None = None
    # In a 2xx answer to ops or the owner this must appear; to another tenant it must not.
    marker: str | None = ENT_A
    mutation: bool = False


Prepare = Callable[[AdminServer], Awaitable[Call]]


def fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def seed_of(server: AdminServer) -> Seed:
    assert server.seed is not None
    return server.seed


async def _audit(server: AdminServer) -> Call:
    return Call("GET", "/v1/audit", params={"enterprise_id": ENT_A})


async def _register(server: AdminServer) -> Call:
    new = fresh("ent-m")
    body = {
        "id": new,
        "id_type": "wecom",
        "name": "Matrix Ltd",
        "industry": "retail",
        "partner_id": PARTNER_A,
    }
    return Call("POST", "/v1/enterprises", body, marker=new, mutation=True)


async def _get_enterprise(server: AdminServer) -> Call:
    return Call("GET", f"/v1/enterprises/{ENT_A}")


async def _patch_enterprise(server: AdminServer) -> Call:
    body = {"verified": True, "reason": "matrix"}
    return Call("PATCH", f"/v1/enterprises/{ENT_A}", body, mutation=True)


async def _balance(server: AdminServer) -> Call:
    return Call("GET", f"/v1/enterprises/{ENT_A}/balance", marker=seed_of(server).gift_a["id"])


async def _gift(server: AdminServer) -> Call:
    body = {"pv": 5, "reason": "matrix"}
    return Call("POST", f"/v1/enterprises/{ENT_A}/gifts", body, mutation=True)


async def _adjust(server: AdminServer) -> Call:
    body = {"bucket_id": seed_of(server).gift_a["id"], "delta_pv": 1, "reason": "matrix"}
    return Call("POST", f"/v1/enterprises/{ENT_A}/adjustments", body, mutation=True)


async def _usage(server: AdminServer) -> Call:
    return Call("GET", f"/v1/enterprises/{ENT_A}/usage", params={"granularity": "hour"})


async def _quote(server: AdminServer) -> Call:
    return Call("POST", "/v1/quotes", {"sku": "pv_1m", "quantity": 1}, marker=None)


async def _create_order(server: AdminServer) -> Call:
    body = {
        "enterprise_id": ENT_A,
        "id_type": "wecom",
        "sku": "pv_1m",
        "quantity": 1,
        "agreement_accepted": True,
    }
    return Call("POST", "/v1/orders", body, mutation=True)


async def _get_order(server: AdminServer) -> Call:
    return Call("GET", f"/v1/orders/{seed_of(server).order_a['id']}")


async def _pay(server: AdminServer) -> Call:
    order = await server.order(paid=False)
    return Call("POST", f"/v1/orders/{order['id']}/pay", {"reference": "m"}, mutation=True)


async def _invoice(server: AdminServer) -> Call:
    order = await server.order()
    body = {"number": fresh("INV")}
    return Call("POST", f"/v1/orders/{order['id']}/invoice", body, mutation=True)


async def _return_invoice(server: AdminServer) -> Call:
    order = await server.order()
    body = {"number": fresh("INV")}
    await server.ok("POST", f"/v1/orders/{order['id']}/invoice", body)
    return Call("POST", f"/v1/orders/{order['id']}/invoice/return", body, mutation=True)


def _refund_body(order: dict[str, Any]) -> dict[str, Any]:
    return {"order_id": order["id"], "package_ids": [p["id"] for p in order["packages"]]}


async def _refund_quote(server: AdminServer) -> Call:
    order = seed_of(server).order_a
    return Call("POST", "/v1/refunds/quote", _refund_body(order), marker=order["id"])


async def _refund(server: AdminServer) -> Call:
    return Call("POST", "/v1/refunds", _refund_body(await server.order()), mutation=True)


async def _put_site(server: AdminServer) -> Call:
    host = fresh("m") + ".test"
    body = {"enterprise_id": ENT_A, "origin": DEAD_ORIGIN}
    return Call("PUT", f"/v1/sites/{host}", body, mutation=True)


async def _list_sites(server: AdminServer) -> Call:
    return Call("GET", "/v1/sites", params={"enterprise_id": ENT_A}, marker=SITE_A)


async def _review(server: AdminServer) -> Call:
    host = fresh("r") + ".test"
    await server.put_site(host)
    body = {"decision": "approve", "note": "content checked"}
    return Call("POST", f"/v1/sites/{host}/review", body, mutation=True)


# Interop accounts and the WeCom relay (docs/rules.md §1.2).  ent-a's trial holds 10 accounts:
# enough for every assignment the matrix makes.
INTEROP = f"/v1/enterprises/{ENT_A}/interop"
WECOM_SETTINGS = {
    "token": "QDG6eK",
    "encoding_aes_key": "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C",
    "corp_id": "wx5823bf96d3bd56c7",
    "relay_url": "https://relay.example.com/wecom",
}


async def _get_interop(server: AdminServer) -> Call:
    return Call("GET", INTEROP)


async def _order_interop(server: AdminServer) -> Call:
    body = {"id_type": "wecom", "accounts": 2, "agreement_accepted": True}
    return Call("POST", INTEROP, body, mutation=True)


async def _patch_interop(server: AdminServer) -> Call:
    return Call("PATCH", INTEROP, {"trial_accounts": 10, "reason": "matrix"}, mutation=True)


async def _assign_member(server: AdminServer) -> Call:
    return Call("POST", f"{INTEROP}/members", {"userid": fresh("u")}, mutation=True)


async def _free_member(server: AdminServer) -> Call:
    userid = fresh("u")
    await server.ok("POST", f"{INTEROP}/members", {"userid": userid}, 201)
    return Call("DELETE", f"{INTEROP}/members/{userid}", mutation=True)


async def _put_wecom(server: AdminServer) -> Call:
    return Call("PUT", f"/v1/enterprises/{ENT_A}/wecom", WECOM_SETTINGS, mutation=True)


async def _get_wecom(server: AdminServer) -> Call:
    await server.ok("PUT", f"/v1/enterprises/{ENT_A}/wecom", WECOM_SETTINGS)
    return Call("GET", f"/v1/enterprises/{ENT_A}/wecom")


async def _wecom_events(server: AdminServer) -> Call:
    return Call("GET", f"/v1/enterprises/{ENT_A}/wecom/events", params={"limit": "10"})


# Alerts (docs/rules.md §4).  The matrix app allows 127.0.0.1: the webhook's port 9 refuses
# at once, so a test message comes back "retry" quickly and leaves a delivery to retry.
ALERTS = f"/v1/enterprises/{ENT_A}/alerts"
ALERT_HOOK = {"type": "webhook", "url": "https://127.0.0.1:9/hook"}


async def _webhook_channel(server: AdminServer) -> str:
    settings = await server.ok("PUT", ALERTS, {"threshold_pv": 0, "channels": [ALERT_HOOK]})
    channel_id: str = settings["channels"][0]["id"]
    return channel_id


async def _get_alerts(server: AdminServer) -> Call:
    return Call("GET", ALERTS)


async def _put_alerts(server: AdminServer) -> Call:
    return Call("PUT", ALERTS, {"threshold_pv": 0, "channels": [ALERT_HOOK]}, mutation=True)


async def _rotate_alert_secret(server: AdminServer) -> Call:
    body = {"channel_id": await _webhook_channel(server)}
    return Call("POST", f"{ALERTS}/secret", body, mutation=True)


async def _alert_events(server: AdminServer) -> Call:
    return Call("GET", f"{ALERTS}/events", params={"limit": "5"})


async def _test_alert(server: AdminServer) -> Call:
    body = {"channel_id": await _webhook_channel(server)}
    return Call("POST", f"{ALERTS}/test", body, mutation=True)


async def _retry_delivery(server: AdminServer) -> Call:
    body = {"channel_id": await _webhook_channel(server)}
    test = await server.ok("POST", f"{ALERTS}/test", body)
    return Call("POST", f"/v1/alerts/deliveries/{test['delivery_id']}/retry", mutation=True)


PREPARE: dict[tuple[str, str], Prepare] = {
    ("GET", "/v1/audit"): _audit,
    ("POST", "/v1/enterprises"): _register,
    ("GET", "/v1/enterprises/{enterprise_id}"): _get_enterprise,
    ("PATCH", "/v1/enterprises/{enterprise_id}"): _patch_enterprise,
    ("GET", "/v1/enterprises/{enterprise_id}/balance"): _balance,
    ("POST", "/v1/enterprises/{enterprise_id}/gifts"): _gift,
    ("POST", "/v1/enterprises/{enterprise_id}/adjustments"): _adjust,
    ("GET", "/v1/enterprises/{enterprise_id}/usage"): _usage,
    ("POST", "/v1/quotes"): _quote,
    ("POST", "/v1/orders"): _create_order,
    ("GET", "/v1/orders/{order_id}"): _get_order,
    ("POST", "/v1/orders/{order_id}/pay"): _pay,
    ("POST", "/v1/orders/{order_id}/invoice"): _invoice,
    ("POST", "/v1/orders/{order_id}/invoice/return"): _return_invoice,
    ("POST", "/v1/refunds/quote"): _refund_quote,
    ("POST", "/v1/refunds"): _refund,
    ("PUT", "/v1/sites/{host}"): _put_site,
    ("GET", "/v1/sites"): _list_sites,
    ("POST", "/v1/sites/{host}/review"): _review,
    ("GET", "/v1/enterprises/{enterprise_id}/interop"): _get_interop,
    ("POST", "/v1/enterprises/{enterprise_id}/interop"): _order_interop,
    ("PATCH", "/v1/enterprises/{enterprise_id}/interop"): _patch_interop,
    ("POST", "/v1/enterprises/{enterprise_id}/interop/members"): _assign_member,
    ("DELETE", "/v1/enterprises/{enterprise_id}/interop/members/{userid}"): _free_member,
    ("PUT", "/v1/enterprises/{enterprise_id}/wecom"): _put_wecom,
    ("GET", "/v1/enterprises/{enterprise_id}/wecom"): _get_wecom,
    ("GET", "/v1/enterprises/{enterprise_id}/wecom/events"): _wecom_events,
    ("GET", "/v1/enterprises/{enterprise_id}/alerts"): _get_alerts,
    ("PUT", "/v1/enterprises/{enterprise_id}/alerts"): _put_alerts,
    ("POST", "/v1/enterprises/{enterprise_id}/alerts/secret"): _rotate_alert_secret,
    ("GET", "/v1/enterprises/{enterprise_id}/alerts/events"): _alert_events,
    ("POST", "/v1/enterprises/{enterprise_id}/alerts/test"): _test_alert,
    ("POST", "/v1/alerts/deliveries/{delivery_id}/retry"): _retry_delivery,
}
