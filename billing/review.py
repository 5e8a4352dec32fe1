"""Content review of sites (docs/rules.md §5): the automatic reviewer, before ops decide.

The reviewer only ever rejects: a restricted industry, or an origin page containing a
deny-listed word.  A site it passes stays ``pending`` until ops approve it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp

from billing.rules.pricing import is_restricted_industry
from metering.sites import Site

_MAX_PAGE = 2 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Verdict:
    rejected: bool
    note: str


async def fetch_page(site: Site, within: float) -> str | None:
    """The origin's page at the site's path prefix; None when it cannot be fetched in time."""
    url = site.origin.rstrip("/") + (site.path_prefix or "/")
    try:
        async with (
            asyncio.timeout(within),
            aiohttp.ClientSession() as session,
            session.get(url, allow_redirects=False) as resp,
        ):
            body = await resp.content.read(_MAX_PAGE)
            return body.decode(resp.charset or "utf-8", errors="replace")
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


async def review(site: Site, industry: str, deny_words: tuple[str, ...], within: float) -> Verdict:
    if is_restricted_industry(industry):
        return Verdict(True, f"restricted industry: {industry}")
    if not deny_words:
        return Verdict(False, "automatic review passed; awaiting ops")
    page = await fetch_page(site, within)
    if page is None:
        return Verdict(False, "origin page could not be fetched; awaiting ops")
    lowered = page.lower()
    found = [w for w in deny_words if w.lower() in lowered]
    if found:
        return Verdict(True, f"origin page contains denied words: {', '.join(found)}")
    return Verdict(False, "automatic review passed; awaiting ops")
