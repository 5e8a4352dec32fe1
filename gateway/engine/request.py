"""One visitor request as the engine parsed it: raw bytes, plus what the policy looks at.

Headers are kept as the raw ``(name, value)`` pairs that arrived, in order, for
forwarding; the few that routing, classification and framing need are picked out once,
while parsing, into ``fields`` (lowercase names, latin-1 values).
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote

# The headers the policy and the engine read, by lowercase name, with their key in
# `Request.fields`; all others are only forwarded.
FIELDS: Final = {
    name: name.decode()
    for name in (
        b"host",
        b"accept",
        b"sec-fetch-dest",
        b"sec-fetch-mode",
        b"sec-purpose",
        b"purpose",
        b"x-moz",
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"expect",
        b"upgrade",
    )
}
# The ones that must not appear twice: a second one would be read differently by
# different parsers (RFC 9112 §3.2, §6.3).
SINGLE: Final = frozenset({b"host", b"content-length", b"transfer-encoding"})

_HOST: Final = re.compile(
    r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"
)


class BadRequest(Exception):
    """The request cannot be served; ``status`` is the answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Request:
    """A parsed request head; the body streams separately."""

    __slots__ = (
        "chunked",
        "connection_names",
        "content_length",
        "expect_continue",
        "fields",
        "forwarded_for",
        "headers",
        "host",
        "keep_alive",
        "method",
        "passed",
        "path",
        "purpose",
        "target",
        "upgrade",
        "version",
        "via",
    )

    def __init__(self) -> None:
        self.method = ""
        self.target = b""  # as sent: origin-form, absolute-form, "*" or authority
        self.path = "/"  # decoded for routing and classification (no query)
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        # Sorted while parsing (`gateway.engine.heads.origin_request` uses them): the
        # header lines passed on as they are, the X-Forwarded-For and Via values the
        # gateway appends to, and whether a Connection header names a header to drop.
        self.passed: list[bytes] = []
        self.forwarded_for: list[bytes] = []
        self.via: list[bytes] = []
        self.connection_names = False
        self.fields: dict[str, str] = {}
        self.purpose = False  # a Sec-Purpose, Purpose or X-Moz header came (a prefetch?)
        self.host = ""
        self.keep_alive = True
        self.content_length = 0
        self.chunked = False
        self.expect_continue = False
        self.upgrade = False

    @property
    def has_body(self) -> bool:
        return self.chunked or self.content_length > 0

    @property
    def path_and_query(self) -> bytes:
        """The origin-form target: an absolute-form target keeps only its path and query."""
        target = self.target
        if target[:1] == b"/":
            return target
        start = target.find(b"/", target.find(b"//") + 2)
        return b"/" if start == -1 else target[start:]

    def complete(self) -> None:
        """Check the head once it is whole: framing, host, version (raises `BadRequest`)."""
        if self.version not in ("1.1", "1.0"):
            if self.version.startswith("0."):  # HTTP/0.9 has no headers to trust
                raise BadRequest(400, f"HTTP/{self.version} is not served")
            raise BadRequest(505, f"HTTP/{self.version} is not served on HTTP/1.1")
        fields = self.fields
        te = fields.get("transfer-encoding")
        if te is not None:
            if self.version == "1.0":
                raise BadRequest(400, "Transfer-Encoding in an HTTP/1.0 request")
            if te.strip().lower() != "chunked":
                raise BadRequest(501, f"transfer coding {te!r} is not supported")
            self.chunked = True
        length = fields.get("content-length")
        if length is not None:
            self.content_length = int(length)  # llhttp checked it is digits
        self.host = _host(fields.get("host"), self.target)
        raw = self.path_and_query.partition(b"?")[0].decode("latin-1")
        self.path = unquote(raw, errors="replace") if "%" in raw else raw
        if self.method == "CONNECT":
            raise BadRequest(405, "CONNECT is not served")
        if self.upgrade and fields.get("upgrade", "").strip().lower() != "websocket":
            # Only websockets are tunnelled; any other Upgrade (h2c, say) is a plain
            # request, its Upgrade header dropped as the hop-by-hop header it is.
            self.upgrade = False
        if self.upgrade and self.has_body:
            raise BadRequest(400, "an Upgrade request with a body")
        expect = fields.get("expect")
        if expect is not None:
            if expect.lower() != "100-continue":
                raise BadRequest(417, f"expectation {expect!r} cannot be met")
            self.expect_continue = self.has_body


_HOSTS: Final[dict[str, str]] = {}  # Host values seen, checked, and what they name


def _host(raw: str | None, target: bytes) -> str:
    """The lowercase, port-less host; an absolute-form target must name the same one."""
    if raw is None:
        raise BadRequest(400, "missing Host")
    if target[:1] == b"/":  # origin-form: the Host header alone says it (checked once)
        host = _HOSTS.get(raw)
        if host is None:
            host = _checked_host(raw, target)
            if len(_HOSTS) >= 4096:
                _HOSTS.clear()
            _HOSTS[raw] = host
        return host
    return _checked_host(raw, target)


def _checked_host(raw: str, target: bytes) -> str:
    host, colon, port = raw.rpartition(":")
    if not colon or not port.isdigit():
        host = raw
    host = host.lower().rstrip(".")
    if not _HOST.fullmatch(host):
        raise BadRequest(400, "invalid Host")
    if target[:1] not in (b"/", b"*"):
        authority = target.partition(b"//")[2].partition(b"/")[0].partition(b"?")[0]
        named = authority.rpartition(b"@")[2].rpartition(b":")
        name = (named[0] if named[1] and named[2].isdigit() else authority).decode("latin-1")
        if b"@" in authority or name.lower().rstrip(".") != host:
            raise BadRequest(400, "the target names another host than Host")
    return host
