"""What the gateway does with a request: route, classify, charge (docs/architecture.md §4).

The engine parses bytes; this module decides, knowing nothing of sockets.  For each
request the engine asks `Policy.route`, then — for a page view, which it answers with its
site's `Route` — `Policy.charge` and, when the Meter's debit comes back,
`Policy.charged`; the answer is a `Local` response prepared once (a block page, 404, 503)
or a `Forward` to the site's origin.  When the exchange with the origin is over the engine
reports it to `Policy.finished`, which gives the PV back if the origin failed to deliver a
charged view, and counts the outcome.
Per request: one dictionary lookup for the site, a few header checks, at most one Meter
debit (batched with its neighbours into one Redis round trip).
"""

from __future__ import annotations

import asyncio

from gateway import blockpage
from gateway.charging import Charge, Charger, Unmetered
from gateway.classify import is_page_view
from gateway.engine.request import Request
from gateway.engine.responses import Page
from gateway.metrics import OUTCOME
from gateway.routing import Route, SiteWatcher
from gateway.settings import GatewaySettings
from metering.buckets import Refusal
from metering.deadline import Waiter
from metering.errors import MeterError
from metering.meter import DebitResult


# Plain classes: compiled, a dataclass's generated __init__ would run interpreted
# (docs/architecture.md §4 "Compiled").
class Local:
    """Answer with a page of the gateway's own; ``outcome`` is counted when it is sent."""

    __slots__ = ("outcome", "page")

    def __init__(self, page: Page, outcome: str) -> None:
        self.page = page
        self.outcome = outcome


class Forward:
    """Send the request to its site's origin; ``bucket_id`` paid for it, if anything.

    ``outcome`` is counted once the origin has answered: served, not_counted (or "");
    ``unmetered``: served fail-open.
    """

    __slots__ = ("bucket_id", "outcome", "route", "unmetered")

    def __init__(
        self, route: Route, bucket_id: str | None, outcome: str, unmetered: Unmetered | None = None
    ) -> None:
        self.route = route
        self.bucket_id = bucket_id
        self.outcome = outcome
        self.unmetered = unmetered


Decision = Local | Forward


class Policy:
    def __init__(
        self, settings: GatewaySettings, sites: SiteWatcher, charger: Charger | None
    ) -> None:
        self._metering = settings.metering and charger is not None
        self._sites = sites
        self._charger = charger
        server = settings.server_header.encode()
        no_store = (b"Cache-Control", b"no-store")
        self._blocked = {
            reason: Local(
                Page(
                    settings.block_status,
                    blockpage.BLOCK_PAGES[reason],
                    headers=(no_store, (b"X-PV-Block-Reason", reason.value.encode())),
                    server=server,
                ),
                f"blocked_{reason.value}",
            )
            for reason in Refusal
        }
        self.not_found = Local(
            Page(404, blockpage.NOT_FOUND_PAGE, headers=(no_store,), server=server),
            "unknown_site",
        )
        retry = (b"Retry-After", b"1")
        self.fail_closed = Local(
            Page(503, blockpage.UNAVAILABLE_PAGE, headers=(no_store, retry), server=server),
            "fail_closed",
        )
        self.overloaded = Local(
            Page(503, blockpage.UNAVAILABLE_PAGE, headers=(no_store, retry), server=server),
            "overloaded",
        )
        self.upstream_failed = {
            status: Local(
                Page(
                    status,
                    blockpage.UNAVAILABLE_PAGE,
                    headers=(no_store, retry) if status == 503 else (no_store,),
                    server=server,
                ),
                "upstream_error",
            )
            for status in (502, 503, 504)
        }

    def route(self, request: Request) -> Decision | Route:
        """Where a request goes: a page of the gateway's own, the origin, or — a page
        view — its site's `Route`, to be charged first."""
        route = self._sites.table.route(request.host, request.path)
        if route is None:
            return self.not_found
        if not self._metering:
            return Forward(route, None, "not_counted")
        assert self._charger is not None
        if request.upgrade or not is_page_view(
            request.method, request.path, request.fields, route, request.purpose
        ):  # a websocket is never a page view
            reason = self._charger.blocked(route.enterprise_id)
            if reason is not None:
                return self._blocked[reason]
            return Forward(route, None, "not_counted")
        return route

    def charge(self, view: Route, waiter: Waiter) -> Decision | None:
        """The decision now, or None: the Meter delivers its result to ``waiter``, for
        `charged`."""
        assert self._charger is not None
        charge = self._charger.charge_for(view.enterprise_id, waiter)
        return None if charge is None else self._decide(view, charge)

    def charged(self, view: Route, result: DebitResult | MeterError) -> Decision:
        assert self._charger is not None
        return self._decide(view, self._charger.settle(view.enterprise_id, result))

    def _decide(self, route: Route, charge: Charge) -> Decision:
        if isinstance(charge, DebitResult):
            if charge.granted:
                return Forward(route, charge.bucket_id, "served")
            assert charge.reason is not None
            return self._blocked[charge.reason]
        if isinstance(charge, Unmetered):
            OUTCOME["fail_open"].inc()  # counted as served, whatever the origin does
            return Forward(route, None, "", charge)
        return self.fail_closed

    def finished(self, forward: Forward, failed: bool) -> asyncio.Task[None] | None:
        """The exchange is over; ``failed``: the origin did not deliver (error, 5xx).

        Returns the give-back of a charged view that failed, for a caller that can wait
        for it before answering (so that a retry sees the PV back).
        """
        if failed:
            OUTCOME["upstream_error"].inc()
            return self._give_back(forward)
        if forward.outcome:
            OUTCOME[forward.outcome].inc()
        return None

    def client_gone(self, forward: Forward) -> None:
        """The visitor left before anything of the page was sent: nothing was delivered."""
        OUTCOME["client_closed"].inc()
        self._give_back(forward)

    def _give_back(self, forward: Forward) -> asyncio.Task[None] | None:
        """The view was not delivered: its PV goes back (or, fail-open, is not replayed)."""
        if forward.unmetered is not None:
            assert self._charger is not None
            self._charger.not_delivered(forward.route.enterprise_id, forward.unmetered)
        if forward.bucket_id is None:
            return None
        assert self._charger is not None
        return self._charger.give_back_soon(forward.route.enterprise_id, forward.bucket_id)

    def sent(self, local: Local) -> None:
        OUTCOME[local.outcome].inc()
