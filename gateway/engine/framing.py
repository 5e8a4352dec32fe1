"""Where a request's bytes end, before llhttp is fed them (docs/architecture.md §4).

The engine feeds llhttp (httptools) exactly one message at a time — the head up to its
blank line, then exactly the body — so that bytes after a message are never parsed while
that message is being answered: pipelined requests are answered strictly in order, and
garbage or a smuggled request behind a valid one is only looked at afterwards.  For a
Content-Length body the end is known from the header; for a chunked body `ChunkedScanner`
follows the chunk framing to find it, and reads each chunk's declared size as soon as its
size line is complete, so that a chunk bigger than the body limit (``ffffffffffffffff``)
is refused at once rather than waited for.  llhttp still parses and checks every byte;
the scanner only says where to cut and refuses what is too large.
"""

from __future__ import annotations

from typing import Final

HEAD_END: Final = b"\r\n\r\n"
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
_MAX_SIZE_DIGITS: Final = 16  # 64 bits
_MAX_LINE: Final = 4096  # a chunk-size line with its extensions, or one trailer line
_MAX_TRAILERS: Final = 16384


class FramingError(Exception):
    """The body cannot be accepted; ``status`` is the answer (400 or 413)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def find_head_end(tail: bytes, data: bytes) -> int:
    """The index in ``data`` just past the head's blank line, or -1.

    ``tail`` is the last bytes (at most 3) already fed of this head, so that a CRLFCRLF
    split across two reads is found.
    """
    if tail:
        joined = tail + data[:3]
        at = joined.find(HEAD_END)
        if at != -1:
            return at + 4 - len(tail)
    at = data.find(HEAD_END)
    return -1 if at == -1 else at + 4


# Scanner states.
_SIZE, _EXT, _SIZE_LF, _DATA, _DATA_CR, _DATA_LF, _TRAILER, _TRAILER_LINE, _TRAILER_LF = range(9)
_END_LF: Final = 9


class ChunkedScanner:
    """Follows a chunked body's framing (RFC 9112 §7.1) in the bytes as they arrive.

    `scan` returns how many of the given bytes belong to the body; `done` turns true when
    the last chunk and the trailer section have been seen.  Raises `FramingError` for a
    chunk size that is not hex, longer than 64 bits, or larger than what is left of
    ``limit`` (the body size allowed), and for lines without CRLF.
    """

    __slots__ = ("_allowed", "_line", "_pending", "_size", "_state", "_trailers", "done")

    def __init__(self, limit: int) -> None:
        self._allowed = limit
        self._state = _SIZE
        self._size = 0
        self._line = 0  # length of the current size or trailer line
        self._pending = 0  # data bytes of the current chunk still to come
        self._trailers = 0
        self.done = False

    def scan(self, data: bytes | memoryview) -> int:
        i, end = 0, len(data)
        while i < end and not self.done:
            if self._state == _DATA:
                step = min(self._pending, end - i)
                self._pending -= step
                i += step
                if not self._pending:
                    self._state = _DATA_CR
                continue
            self._byte(data[i])
            i += 1
        return i

    def _byte(self, b: int) -> None:
        state = self._state
        if state == _SIZE:
            self._size_byte(b)
        elif state == _EXT:
            self._line += 1
            if self._line > _MAX_LINE:
                raise FramingError(400, "chunk extension too long")
            if b == 0x0D:
                self._state = _SIZE_LF
        elif state == _SIZE_LF:
            self._expect(b, 0x0A, "chunk size line without CRLF")
            self._chunk_started()
        elif state == _DATA_CR:
            self._expect(b, 0x0D, "chunk data longer than its size")
            self._state = _DATA_LF
        elif state == _DATA_LF:
            self._expect(b, 0x0A, "chunk data longer than its size")
            self._state, self._size, self._line = _SIZE, 0, 0
        else:
            self._trailer_byte(b)

    def _size_byte(self, b: int) -> None:
        if b in _HEX:
            self._line += 1
            if self._line > _MAX_SIZE_DIGITS:
                raise FramingError(400, "chunk size longer than 64 bits")
            self._size = self._size * 16 + int(chr(b), 16)
        elif self._line == 0:
            raise FramingError(400, "chunk size is not a hex number")
        elif b == 0x3B:  # ';' starts an extension
            self._state = _EXT
        elif b == 0x0D:
            self._state = _SIZE_LF
        else:
            raise FramingError(400, "invalid byte in chunk size line")

    def _chunk_started(self) -> None:
        if self._size > self._allowed:
            raise FramingError(413, "request body too large")
        self._allowed -= self._size
        if self._size:
            self._state, self._pending = _DATA, self._size
        else:
            self._state, self._line = _TRAILER, 0

    def _trailer_byte(self, b: int) -> None:
        state = self._state
        self._trailers += 1
        if self._trailers > _MAX_TRAILERS:
            raise FramingError(400, "trailer section too long")
        if state == _TRAILER:  # at the start of a trailer line, or of the final CRLF
            self._state = _END_LF if b == 0x0D else _TRAILER_LINE
        elif state == _TRAILER_LINE:
            if b == 0x0D:
                self._state = _TRAILER_LF
        elif state == _TRAILER_LF:
            self._expect(b, 0x0A, "trailer line without CRLF")
            self._state = _TRAILER
        else:  # _END_LF
            self._expect(b, 0x0A, "chunked body without its final CRLF")
            self.done = True

    @staticmethod
    def _expect(b: int, wanted: int, why: str) -> None:
        if b != wanted:
            raise FramingError(400, why)
