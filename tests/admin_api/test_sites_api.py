"""Sites and their review over HTTP (docs/rules.md §5) against the full admin app.

The automatic reviewer (deny-listed words on the origin's page, restricted industries),
approval by ops only, and what the site registry — what the gateways serve — holds at each
step.  Tests taking ``admin`` run on SQLite and, when ``PVGATE_TEST_POSTGRES_URL`` is set,
on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from billing.settings import BillingSettings, ReviewSection
from metering.sites import SiteRegistry, SiteStatus
from pvgate.embedded import free_port
from tests.admin_api.conftest import ENT_A, AdminFactory, AdminServer, expect

DENY_WORDS = ("casino", "赌博")
PAGES = {
    "/clean/": "<html><body><h1>春季新品</h1><p>Spring collection</p></body></html>",
    "/latin/": "<html><body>Play at our Online CASINO tonight</body></html>",
    "/chinese/": "<html><body><p>线上赌博，注册即送</p></body></html>",
}


@pytest.fixture
async def origin() -> AsyncIterator[str]:
    """A loopback origin serving `PAGES` (UTF-8 HTML)."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGES.get(request.path, "<html></html>"), content_type="text/html")

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_the_automatic_reviewer_rejects_denied_words(make_admin: AdminFactory, origin: str):
    review = ReviewSection(deny_words=DENY_WORDS, allow_addresses=("127.0.0.1",))
    server = await make_admin(BillingSettings(review=review))
    registry = SiteRegistry(server.redis)
    token = server.tokens.merchant_a
    expected = {
        "clean": ("pending", "awaiting ops"),
        "latin": ("rejected", "casino"),
        "chinese": ("rejected", "赌博"),
    }
    for name, (status, note) in expected.items():
        host = f"{name}.ent-a.test"
        body = {"enterprise_id": ENT_A, "origin": f"{origin}/{name}/"}
        site = expect(await server.api.call("PUT", f"/v1/sites/{host}", token, body), 200)
        assert (site["status"], note in site["review_note"]) == (status, True), site
        stored = await registry.get(host)
        assert stored is not None
        assert stored.status == SiteStatus(status)


async def test_a_restricted_industry_site_is_rejected(admin: AdminServer):
    await admin.register("ent-clinic", industry="medical")
    site = await admin.put_site("clinic.test", "ent-clinic")
    assert site["status"] == "rejected"
    assert "restricted industry" in site["review_note"]
    stored = await SiteRegistry(admin.redis).get("clinic.test")
    assert stored is not None
    assert stored.status is SiteStatus.REJECTED


async def test_only_ops_approve_and_only_approved_sites_are_live(admin: AdminServer):
    registry = SiteRegistry(admin.redis)
    host = "promo.ent-a.test"
    body = {"enterprise_id": ENT_A, "origin": "http://127.0.0.1:9/promo", "exclude": ["/api/*"]}
    put = await admin.api.call("PUT", f"/v1/sites/{host}", admin.tokens.merchant_a, body)
    assert expect(put, 200)["status"] == "pending"
    pending = await registry.get(host)
    assert pending is None or pending.status is SiteStatus.PENDING
    decision = {"decision": "approve", "note": "content checked"}
    for token in (admin.tokens.merchant_a, admin.tokens.partner_a):
        refused = await admin.api.call("POST", f"/v1/sites/{host}/review", token, decision)
        expect(refused, 403, "forbidden")
    assert (await registry.get(host)) in (None, pending)

    approved = expect(await admin.ops("POST", f"/v1/sites/{host}/review", decision), 200)
    assert (approved["status"], approved["review_note"]) == ("approved", "content checked")
    live = await registry.get(host)
    assert live is not None
    assert (live.status, live.enterprise_id, live.origin, live.exclude) == (
        SiteStatus.APPROVED,
        ENT_A,
        "http://127.0.0.1:9/promo",
        ("/api/*",),
    )
    listed = expect(await admin.ops("GET", "/v1/sites", params={"status": "approved"}), 200)
    assert [s["key"] for s in listed["items"]] == [host]

    # A changed site goes back to review, and the gateways stop serving it meanwhile.
    body["origin"] = "http://127.0.0.1:9/promo-v2"
    put = await admin.api.call("PUT", f"/v1/sites/{host}", admin.tokens.merchant_a, body)
    assert expect(put, 200)["status"] == "pending"
    changed = await registry.get(host)
    assert changed is not None
    assert changed.status is SiteStatus.PENDING

    missing = await admin.ops("POST", "/v1/sites/nope.test/review", decision)
    expect(missing, 404, "not_found")
