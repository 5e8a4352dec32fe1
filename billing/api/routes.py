"""Every business route of the admin API, gathered in one `Api`."""

from __future__ import annotations

from billing.api import routes_alerts, routes_enterprises, routes_orders, routes_sites
from billing.api.framework import Api
from billing.interop import routes as routes_interop
from billing.wecom import routes as routes_wecom


def business_api() -> Api:
    api = Api()
    for module in (
        routes_enterprises,
        routes_orders,
        routes_sites,
        routes_alerts,
        routes_interop,
        routes_wecom,
    ):
        api.include(module.api)
    return api
