"""Responses the gateway writes itself, built as bytes: status lines, Date, local pages.

A local response (a block page, an error) is assembled from parts prepared once; only the
``Date`` line is new each second.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
CRLF = b"\r\n"


def status_line(status: int, reason: bytes | None = None) -> bytes:
    if reason is None:
        try:
            reason = HTTPStatus(status).phrase.encode()
        except ValueError:
            reason = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, reason)


_STATUS_LINES = {s.value: status_line(s.value) for s in HTTPStatus}


class DateHeader:
    """The ``Date:`` line, formatted at most once a second."""

    __slots__ = ("_line", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def line(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = b"Date: " + formatdate(now, usegmt=True).encode() + CRLF
        return self._line


DATE = DateHeader()


class Page:
    """A local response prepared once: status line, fixed headers and body."""

    __slots__ = ("_body", "_head", "status")

    def __init__(
        self,
        status: int,
        body: bytes,
        *,
        content_type: bytes = b"text/html; charset=utf-8",
        headers: tuple[tuple[bytes, bytes], ...] = (),
        server: bytes = b"",
    ) -> None:
        self.status = status
        lines = [_STATUS_LINES.get(status) or status_line(status)]
        if server:
            lines.append(b"Server: " + server + CRLF)
        lines.append(b"Content-Type: " + content_type + CRLF)
        lines.append(b"Content-Length: %d\r\n" % len(body))
        lines.extend(name + b": " + value + CRLF for name, value in headers)
        self._head = b"".join(lines)
        self._body = body

    def render(self, keep_alive: bool, head_only: bool = False) -> bytes:
        connection = b"" if keep_alive else b"Connection: close\r\n"
        body = b"" if head_only else self._body
        return b"".join((self._head, DATE.line(), connection, CRLF, body))


def text_page(status: int, text: str, server: bytes, **extra: bytes) -> Page:
    """A small plain-text error page (bad requests, limits)."""
    headers = tuple((name.replace("_", "-").encode(), v) for name, v in extra.items())
    return Page(
        status,
        text.encode() + b"\n",
        content_type=b"text/plain; charset=utf-8",
        headers=headers,
        server=server,
    )
