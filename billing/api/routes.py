"""Every business route of the admin API, gathered in one `Api`."""

from __future__ import annotations

from billing.api import routes_enterprises, routes_orders, routes_sites
from billing.api.framework import Api


def business_api() -> Api:
    api = Api()
    for module in (routes_enterprises, routes_orders, routes_sites):
        api.include(module.api)
    return api
