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

from gateway.engine.origin import Origin
from gateway.engine.request import Request

HOP_BY_HOP = frozenset(
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
_REQUEST_OWN = HOP_BY_HOP | {
    b"host",
    b"content-length",
    b"expect",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"via",
}
VIA = b"1.1 pvgate"
CRLF = b"\r\n"


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
        self.passed: list[bytes] = []  # header lines for the visitor, as they came
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


def request_header(request: Request, name: bytes, lower: bytes, value: bytes) -> None:
    """Sort one request header (``lower``: its name in lowercase) for `origin_request`."""
    if lower not in _REQUEST_OWN:
        request.passed.append(b"%b: %b\r\n" % (name, value))
    elif lower == b"x-forwarded-for":
        request.forwarded_for.append(value)
    elif lower == b"via":
        request.via.append(value)
    elif lower == b"connection" and _names_others(value):
        request.connection_names = True


def response_header(response: Response, name: bytes, value: bytes) -> None:
    """Sort one response header for `visitor_response`."""
    response.headers.append((name, value))
    lower = name.lower()
    if lower not in HOP_BY_HOP:
        response.passed.append(b"%b: %b\r\n" % (name, value))
        if lower == b"content-length":
            response.has_length = True
    elif lower == b"transfer-encoding":
        response.te = True
    elif lower == b"connection" and _names_others(value):
        response.connection_names = True


def _names_others(value: bytes) -> bool:
    """Whether a Connection value names a header beyond the hop-by-hop ones."""
    return any(token.strip().lower() not in HOP_BY_HOP for token in value.split(b","))


def _named_in_connection(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    named: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            named.update(token.strip().lower() for token in value.split(b","))
    return frozenset(named)


def _without(headers: list[tuple[bytes, bytes]], drop: frozenset[bytes]) -> list[bytes]:
    """The header lines passed on when a Connection header names some to drop."""
    return [b"%b: %b\r\n" % (n, v) for n, v in headers if n.lower() not in drop]


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


def visitor_response(request: Request, response: Response, keep_alive: bool) -> bytes:
    """The head sent to the visitor; sets how the body is framed and whether to keep alive."""
    status = response.status
    passed = response.passed
    if response.connection_names:
        named = _named_in_connection(response.headers)
        passed = _without(response.headers, HOP_BY_HOP | named)
        response.has_length = response.has_length and b"content-length" not in named
    lines = [b"HTTP/1.1 %d " % status, response.reason, CRLF, *passed]
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
