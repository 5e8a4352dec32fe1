"""Message heads built once as bytes: the request to the origin, the response to the visitor.

Hop-by-hop headers (RFC 9110 §7.6.1) — those named in ``Connection`` included — never
cross the gateway in either direction.  Toward the origin the request gets ``Host`` of the
origin's URL, its own framing (``Content-Length`` or ``Transfer-Encoding: chunked``), and
``X-Forwarded-For`` and ``Via`` appended to what the client sent, ``X-Forwarded-Proto``
and ``-Host`` set (a client's own are dropped).
Toward the visitor the response keeps the origin's headers and length; a body without a
length (chunked, or read until the origin closes) is sent chunked to an HTTP/1.1 client
and delimited by closing the connection for an HTTP/1.0 one.  Trailers are dropped.
"""

from __future__ import annotations

from typing import Final

from gateway.engine.origin import Origin
from gateway.engine.request import FIELDS, SINGLE, Request

HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Request headers replaced or handled by the gateway itself.  A client's own
# X-Forwarded-Proto and -Host are dropped, not passed on: the origin must be able to trust
# them (X-Forwarded-For and Via are lists the gateway appends to).
_REQUEST_OWN: Final = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"expect",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"via",
}
# The headers that can mark a request as a prefetch (gateway/classify.py reads them).
_PURPOSE: Final = frozenset({b"sec-purpose", b"purpose", b"x-moz"})
_PLAIN_CONNECTION: Final = frozenset(
    {b"keep-alive", b"Keep-Alive", b"close", b"Close", b"upgrade", b"Upgrade"}
)
VIA: Final = b"1.1 pvgate"
CRLF: Final = b"\r\n"
SEP: Final = b": "


class Response:
    """The origin's response head as parsed, and how its body is framed to the visitor."""

    __slots__ = (
        "chunked",
        "connection_names",
        "has_body",
        "has_length",
        "head_done",
        "headers",
        "keep_origin",
        "keep_visitor",
        "passed",
        "reason",
        "status",
        "te",
        "until_close",
    )

    def __init__(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.passed: list[bytes] = []  # header lines for the visitor, as they came, in parts
        self.connection_names = False  # a Connection header names a header to drop
        self.has_length = False
        self.te = False
        self.head_done = False
        self.keep_origin = False
        self.keep_visitor = False
        self.chunked = False  # re-chunked toward the visitor
        self.until_close = False  # the origin's body ends when it closes
        self.has_body = True


# Each header is sorted once, as the parser reports it, into the lines passed on as they
# came and what the gateway handles itself; a head is then built by joining.  Only a
# Connection header that names other headers (rare: browsers send "keep-alive") makes
# the head be built again from all the headers, without the ones it names.


# What a header name means to the gateway is worked out once per name as it arrives (the
# same few names come in every request) and kept, up to _NAMES_KEPT names: one
# dictionary lookup then replaces lowercasing the name and looking it up in sets.
PASS: Final = 0  # passed on as it came
OWN: Final = 1  # handled by the gateway itself (hop-by-hop, or replaced)
FORWARDED_FOR: Final = 2
VIA_VALUE: Final = 3
CONNECTION: Final = 4
LENGTH: Final = 5  # a response's Content-Length: passed on, and the body has a length
TE: Final = 6  # a response's Transfer-Encoding
_NAMES_KEPT: Final = 1024


class Name:
    """A request header's name: lowercase, its role, its key in `Request.fields`."""

    __slots__ = ("field", "lower", "purpose", "role", "single")

    def __init__(self, name: bytes) -> None:
        lower = name.lower()
        self.lower = lower
        self.field: str | None = FIELDS.get(lower)
        self.single = lower in SINGLE
        self.purpose = lower in _PURPOSE
        if lower not in _REQUEST_OWN:
            self.role = PASS
        elif lower == b"x-forwarded-for":
            self.role = FORWARDED_FOR
        elif lower == b"via":
            self.role = VIA_VALUE
        elif lower == b"connection":
            self.role = CONNECTION
        else:
            self.role = OWN


_REQUEST_NAMES: Final[dict[bytes, Name]] = {}
_RESPONSE_ROLES: Final[dict[bytes, int]] = {}


def request_header(request: Request, name: bytes, value: bytes) -> Name:
    """Sort one request header for `origin_request`; what its name means."""
    known = _REQUEST_NAMES.get(name)
    if known is None:
        known = Name(name)
        if len(_REQUEST_NAMES) < _NAMES_KEPT:
            _REQUEST_NAMES[name] = known
    role = known.role
    if role == PASS:
        _pass(request.passed, name, value)
    elif role == FORWARDED_FOR:
        request.forwarded_for.append(value)
    elif role == VIA_VALUE:
        request.via.append(value)
    elif role == CONNECTION and _names_others(value):
        request.connection_names = True
    return known


def _response_role(name: bytes) -> int:
    lower = name.lower()
    if lower == b"content-length":
        return LENGTH
    if lower not in HOP_BY_HOP:
        return PASS
    if lower == b"transfer-encoding":
        return TE
    return CONNECTION if lower == b"connection" else OWN


def response_header(response: Response, name: bytes, value: bytes) -> None:
    """Sort one response header for `visitor_response`."""
    response.headers.append((name, value))
    role = _RESPONSE_ROLES.get(name)
    if role is None:
        role = _response_role(name)
        if len(_RESPONSE_ROLES) < _NAMES_KEPT:
            _RESPONSE_ROLES[name] = role
    if role == PASS:
        _pass(response.passed, name, value)
    elif role == LENGTH:
        _pass(response.passed, name, value)
        response.has_length = True
    elif role == TE:
        response.te = True
    elif role == CONNECTION and _names_others(value):
        response.connection_names = True


def _pass(passed: list[bytes], name: bytes, value: bytes) -> None:
    """Add a header line, as the parts a head joins (cheaper than formatting a line)."""
    passed.append(name)
    passed.append(SEP)
    passed.append(value)
    passed.append(CRLF)


def _names_others(value: bytes) -> bool:
    """Whether a Connection value names a header beyond the hop-by-hop ones."""
    if value in _PLAIN_CONNECTION:  # the usual values, without splitting them
        return False
    return any(token.strip().lower() not in HOP_BY_HOP for token in value.split(b","))


def _named_in_connection(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    named: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            named.update(token.strip().lower() for token in value.split(b","))
    return frozenset(named)


def _without(headers: list[tuple[bytes, bytes]], drop: frozenset[bytes]) -> list[bytes]:
    """The header lines passed on when a Connection header names some to drop."""
    passed: list[bytes] = []
    for name, value in headers:
        if name.lower() not in drop:
            _pass(passed, name, value)
    return passed


def origin_request(request: Request, origin: Origin, peer: str) -> bytes:
    """The head sent to the origin for ``request`` (body framing included)."""
    passed = request.passed
    if request.connection_names:
        passed = _without(request.headers, _REQUEST_OWN | _named_in_connection(request.headers))
    lines = [
        request.method.encode(),
        b" ",
        origin.base_path,
        request.path_and_query,
        b" HTTP/1.1\r\nHost: ",
        origin.host_header,
        CRLF,
        *passed,
    ]
    if request.chunked:
        lines.append(b"Transfer-Encoding: chunked\r\n")
    elif request.content_length or request.method in ("POST", "PUT", "PATCH"):
        lines.append(b"Content-Length: %d\r\n" % request.content_length)
    if request.upgrade:
        upgrade = request.fields.get("upgrade", "").encode("latin-1")
        lines += (b"Connection: upgrade\r\nUpgrade: ", upgrade, CRLF)
    forwarded_for = peer.encode()
    if request.forwarded_for:
        forwarded_for = b", ".join((*request.forwarded_for, forwarded_for))
    via = b", ".join((*request.via, VIA)) if request.via else VIA
    lines += (
        b"X-Forwarded-For: ",
        forwarded_for,
        b"\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: ",
        request.host.encode(),
        b"\r\nVia: ",
        via,
        b"\r\n\r\n",
    )
    return b"".join(lines)


_STATUS_LINES: Final[dict[int, bytes]] = {}


def visitor_response(request: Request, response: Response, keep_alive: bool) -> bytes:
    """The head sent to the visitor; sets how the body is framed and whether to keep alive."""
    status = response.status
    passed = response.passed
    if response.connection_names:
        named = _named_in_connection(response.headers)
        passed = _without(response.headers, HOP_BY_HOP | named)
        response.has_length = response.has_length and b"content-length" not in named
    status_line = _STATUS_LINES.get(status)
    if status_line is None:  # parsed by llhttp: three digits, so this stays small
        status_line = _STATUS_LINES[status] = b"HTTP/1.1 %d " % status
    lines = [status_line, response.reason, CRLF, *passed]
    http10 = request.version == "1.0"
    if status == 101:
        upgrade = _value(response.headers, b"upgrade")
        lines += (b"Connection: upgrade\r\nUpgrade: ", upgrade, CRLF)
        response.has_body = False
    elif request.method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        response.has_body = False
    elif response.te or not response.has_length:
        response.until_close = not response.te
        if http10:
            keep_alive = False  # the body ends when the connection closes
        else:
            response.chunked = True
            lines.append(b"Transfer-Encoding: chunked\r\n")
    if status != 101:
        if not keep_alive:
            lines.append(b"Connection: close\r\n")
        elif http10:
            lines.append(b"Connection: keep-alive\r\n")
    response.keep_visitor = keep_alive
    lines.append(CRLF)
    return b"".join(lines)


def _value(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes:
    for key, value in headers:
        if key.lower() == name:
            return value
    return b""


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)
