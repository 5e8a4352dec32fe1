"""The heads the engine builds: headers sorted as parsed, hop-by-hop ones dropped, and
those a Connection header names dropped too (RFC 9110 §7.6.1) — also when it names the
very header that frames the body."""

from __future__ import annotations

from gateway.engine import heads
from gateway.engine.origin import Origin
from gateway.engine.request import Request

ORIGIN = Origin.parse("http://127.0.0.1:8080/base/")


def request_with(*headers: tuple[bytes, bytes]) -> Request:
    request = Request()
    request.method, request.target = "GET", b"/page?q=1"
    for name, value in headers:
        request.headers.append((name, value))
        heads.request_header(request, name, value)
        request.fields[name.lower().decode()] = value.decode()
    request.complete()
    return request


def response_with(*headers: tuple[bytes, bytes], status: int = 200) -> heads.Response:
    response = heads.Response()
    response.status, response.reason = status, b"OK"
    for name, value in headers:
        heads.response_header(response, name, value)
    return response


def lines(head: bytes) -> list[bytes]:
    return head.split(b"\r\n")


def test_the_origin_request_keeps_end_to_end_headers_in_order_and_appends_its_own():
    request = request_with(
        (b"Host", b"shop.test"),
        (b"X-Forwarded-For", b"10.0.0.1"),
        (b"Accept", b"text/html"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Via", b"1.0 edge"),
        (b"X-Forwarded-Proto", b"https"),
        (b"Cookie", b"a=1"),
    )
    assert not request.connection_names
    head = heads.origin_request(request, ORIGIN, "192.0.2.7")
    assert lines(head) == [
        b"GET /base/page?q=1 HTTP/1.1",
        b"Host: 127.0.0.1:8080",
        b"Accept: text/html",
        b"Cookie: a=1",
        b"X-Forwarded-For: 10.0.0.1, 192.0.2.7",
        b"X-Forwarded-Proto: http",
        b"X-Forwarded-Host: shop.test",
        b"Via: 1.0 edge, 1.1 pvgate",
        b"",
        b"",
    ]


def test_a_request_header_named_by_connection_is_not_forwarded():
    request = request_with(
        (b"Host", b"shop.test"),
        (b"Connection", b"keep-alive, X-Secret"),
        (b"X-Secret", b"s"),
        (b"X-Kept", b"k"),
    )
    assert request.connection_names
    head = heads.origin_request(request, ORIGIN, "192.0.2.7")
    assert b"X-Kept: k\r\n" in head
    assert b"X-Secret" not in head
    assert b"Connection" not in head


def test_connection_keep_alive_alone_takes_the_fast_path():
    request = request_with((b"Host", b"shop.test"), (b"Connection", b"Keep-Alive"))
    assert not request.connection_names


def test_the_visitor_response_drops_hop_by_hop_and_named_headers():
    response = response_with(
        (b"Content-Type", b"text/html"),
        (b"Connection", b"keep-alive, X-Internal"),
        (b"X-Internal", b"i"),
        (b"Keep-Alive", b"timeout=4"),
        (b"Content-Length", b"3"),
    )
    request = request_with((b"Host", b"shop.test"))
    head = heads.visitor_response(request, response, True)
    assert lines(head) == [b"HTTP/1.1 200 OK", b"Content-Type: text/html", b"Content-Length: 3",
                           b"", b""]  # fmt: skip
    assert not response.chunked
    assert response.keep_visitor


def test_a_response_whose_connection_names_its_length_is_re_chunked():
    """An origin that names Content-Length in Connection: the length is dropped, so the
    body must be framed some other way, or the visitor's connection would desync."""
    response = response_with((b"Content-Length", b"3"), (b"Connection", b"content-length"))
    head = heads.visitor_response(request_with((b"Host", b"shop.test")), response, True)
    assert b"Content-Length" not in head
    assert b"Transfer-Encoding: chunked\r\n" in head
    assert response.chunked
    assert response.until_close


def test_a_chunked_response_without_length_is_re_chunked_and_one_with_it_is_not():
    chunked = response_with((b"Transfer-Encoding", b"chunked"))
    head = heads.visitor_response(request_with((b"Host", b"shop.test")), chunked, True)
    assert head.count(b"Transfer-Encoding: chunked") == 1
    assert chunked.chunked
    assert not chunked.until_close
    plain = response_with((b"Content-Length", b"10"))
    heads.visitor_response(request_with((b"Host", b"shop.test")), plain, True)
    assert not plain.chunked


def test_header_names_in_any_case_are_sorted_alike():
    """Names are sorted once per spelling and kept: each spelling still means its name."""
    for spelling in (b"X-Forwarded-For", b"x-forwarded-for", b"X-FORWARDED-FOR"):
        request = request_with((b"Host", b"shop.test"), (spelling, b"10.0.0.1"))
        assert request.forwarded_for == [b"10.0.0.1"]
        assert b"10.0.0.1, 192.0.2.7" in heads.origin_request(request, ORIGIN, "192.0.2.7")
    for spelling in (b"Transfer-Encoding", b"TRANSFER-ENCODING", b"transfer-encoding"):
        response = response_with((spelling, b"chunked"), (b"Content-Type", b"text/html"))
        assert response.te
        head = heads.visitor_response(request, response, True)  # re-chunked by the gateway
        assert head.lower().count(b"transfer-encoding") == 1


def test_names_past_the_kept_ones_are_sorted_all_the_same():
    """A client sending thousands of distinct names fills the cache; the rest still work."""
    names = [b"X-Junk-%d" % i for i in range(heads._NAMES_KEPT + 10)]
    request = request_with((b"Host", b"shop.test"), *((n, b"v") for n in names), (b"Via", b"1.0 a"))
    assert len(heads._REQUEST_NAMES) <= heads._NAMES_KEPT
    head = heads.origin_request(request, ORIGIN, "192.0.2.7")
    assert all(b"%b: v\r\n" % n in head for n in names)
    assert b"Via: 1.0 a, 1.1 pvgate\r\n" in head
    response = response_with(*((n, b"r") for n in names), (b"Content-Length", b"5"))
    assert response.has_length
    assert len(heads._RESPONSE_ROLES) <= heads._NAMES_KEPT
    assert all(b"%b: r\r\n" % n in heads.visitor_response(request, response, True) for n in names)


def test_the_headers_that_can_mark_a_prefetch_are_flagged_while_parsing():
    """Classification looks for a prefetch only when one of these came (gateway/classify.py)."""
    for name in (b"Sec-Purpose", b"purpose", b"X-Moz"):
        assert heads.Name(name).purpose
    for name in (b"Accept", b"Sec-Fetch-Dest", b"X-Purpose-Of-Life"):
        assert not heads.Name(name).purpose
