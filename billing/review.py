"""Content review of sites (docs/rules.md §5): the automatic reviewer, before ops decide.

The reviewer only ever rejects: a restricted industry, or an origin page containing a
deny-listed word.  A site it passes stays ``pending`` until ops approve it.  The origin is a
URL the merchant chose, so it is fetched through `billing.outbound`: only at public
addresses (or those of ``[review] allow_addresses``), redirects not followed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from billing.outbound import OutboundClient, OutboundError, OutboundPolicy
from billing.rules.pricing import is_restricted_industry
from metering.sites import Site

_MAX_PAGE = 2 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Verdict:
    rejected: bool
    note: str


async def fetch_page(site: Site, within: float, allow: Iterable[str] = ()) -> str | None:
    """The origin's page at the site's path prefix; None when it cannot be fetched in time
    or its address is not one billing may call."""
    url = site.origin.rstrip("/") + (site.path_prefix or "/")
    policy = OutboundPolicy.build(allow_http=True, allow_addresses=allow)  # origins may be http
    client = OutboundClient(policy, timeout=within, max_response=_MAX_PAGE)
    try:
        page = await client.request("GET", url)
    except OutboundError:
        return None
    finally:
        await client.close()
    charset = page.headers.get("Content-Type", "").partition("charset=")[2].strip() or "utf-8"
    try:
        return page.body.decode(charset, errors="replace")
    except LookupError:
        return page.text()


async def review(
    site: Site,
    industry: str,
    deny_words: tuple[str, ...],
    within: float,
    allow: Iterable[str] = (),
) -> Verdict:
    if is_restricted_industry(industry):
        return Verdict(True, f"restricted industry: {industry}")
    if not deny_words:
        return Verdict(False, "automatic review passed; awaiting ops")
    page = await fetch_page(site, within, allow)
    if page is None:
        return Verdict(False, "origin page could not be fetched; awaiting ops")
    lowered = page.lower()
    found = [w for w in deny_words if w.lower() in lowered]
    if found:
        return Verdict(True, f"origin page contains denied words: {', '.join(found)}")
    return Verdict(False, "automatic review passed; awaiting ops")
