"""What counts as a page view (docs/architecture.md §4).

A PV is a ``GET`` for a document — ``Sec-Fetch-Dest: document|iframe``, or, from a client
that sends no ``Sec-Fetch-*`` headers, an ``Accept`` naming ``text/html`` — for a path
that is not an asset, and not a prefetch or prerender.  A site's ``include`` globs narrow
the paths that may count; its ``exclude`` globs take paths out.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Final

from gateway.routing import Route

ASSET_SUFFIXES: Final = (
    ".js",
    ".css",
    ".png",
    ".jpg",
    ".jpeg",
    ".gif",
    ".svg",
    ".webp",
    ".ico",
    ".woff",
    ".woff2",
    ".ttf",
    ".map",
    ".json",
    ".txt",
)
_ASSETS: Final = frozenset(ASSET_SUFFIXES)
_DOCUMENT_DESTS: Final = frozenset({"document", "iframe"})


def is_page_view(
    method: str, path: str, headers: dict[str, str], route: Route, purpose: bool = True
) -> bool:
    """``headers``: the request's header values by lowercase name; ``route``: its site;
    ``purpose``: False when the request has none of the headers that mark a prefetch (the
    engine knows while parsing), so they need not be looked up."""
    if method != "GET" or (purpose and _is_speculative(headers)):
        return False
    # Each suffix has one dot, its first character: the path ends with one of them if and
    # only if what follows its last dot is one (one set lookup, not fifteen comparisons).
    dot = path.rfind(".")
    if dot != -1 and path[dot:].lower() in _ASSETS:
        return False
    dest = headers.get("sec-fetch-dest")
    if dest is not None:
        # As browsers send it, first (two comparisons: no new string, no hash).
        if dest != "document" and dest != "iframe" and dest.lower() not in _DOCUMENT_DESTS:
            return False
    elif headers.get("sec-fetch-mode") is not None or "text/html" not in headers.get("accept", ""):
        return False
    if not route.ruled:
        return True  # no rules, the usual case: no call to the cache
    return _allowed_by_rules(path, route.include, route.exclude)


def _is_speculative(headers: dict[str, str]) -> bool:
    purpose = headers.get("sec-purpose") or headers.get("purpose") or headers.get("x-moz")
    return purpose is not None and ("prefetch" in purpose or "prerender" in purpose)


@lru_cache(maxsize=4096)
def _allowed_by_rules(path: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    if include and not any(fnmatchcase(path, g) for g in include):
        return False
    return not any(fnmatchcase(path, g) for g in exclude)
