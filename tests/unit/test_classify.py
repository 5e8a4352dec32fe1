"""What counts as a page view (docs/architecture.md §4): the asset check, against its rule."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.classify import ASSET_SUFFIXES, is_page_view
from gateway.routing import Route
from metering.sites import Site, SiteStatus

SITE = Route(Site(host="shop.test", enterprise_id="e1", origin="http://127.0.0.1:9",
                  status=SiteStatus.APPROVED))  # fmt: skip
DOCUMENT = {"accept": "text/html", "sec-fetch-dest": "document"}


@given(st.text(alphabet="/.aAjJsSxXcmpn2_-", max_size=24))
def test_an_asset_is_a_path_ending_in_an_asset_suffix_in_any_case(tail):
    path = "/" + tail
    assert is_page_view("GET", path, DOCUMENT, SITE) == (not path.lower().endswith(ASSET_SUFFIXES))


def test_examples():
    assert is_page_view("GET", "/landing", DOCUMENT, SITE)
    assert is_page_view("GET", "/v1.2/landing", DOCUMENT, SITE)
    assert not is_page_view("GET", "/app.min.JS", DOCUMENT, SITE)
    assert not is_page_view("GET", "/fonts/a.woff2", DOCUMENT, SITE)
    assert is_page_view("GET", "/a.woff2x", DOCUMENT, SITE)
    assert not is_page_view("POST", "/landing", DOCUMENT, SITE)
    assert not is_page_view("GET", "/landing", {"accept": "*/*"}, SITE)
    assert not is_page_view("GET", "/landing", {**DOCUMENT, "sec-purpose": "prefetch"}, SITE)
    ruled = Route(Site(host="shop.test", enterprise_id="e1", origin="http://127.0.0.1:9",
                       status=SiteStatus.APPROVED, exclude=("/admin/*",)))  # fmt: skip
    assert not is_page_view("GET", "/admin/x", DOCUMENT, ruled)
    assert is_page_view("GET", "/shop/x", DOCUMENT, ruled)
    only = Route(Site(host="shop.test", enterprise_id="e1", origin="http://127.0.0.1:9",
                      status=SiteStatus.APPROVED, include=("/shop/*",)))  # fmt: skip
    assert is_page_view("GET", "/shop/x", DOCUMENT, only)
    assert not is_page_view("GET", "/blog/x", DOCUMENT, only)
