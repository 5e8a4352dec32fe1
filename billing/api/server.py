"""Serving the admin app: the HTTP parser's refusals answered like every other error.

aiohttp's protocol answers a request it cannot parse — a raw non-ASCII byte or a control
character in the path, a request line or a header over its limit, bytes that are not HTTP
— by itself, before any middleware runs: ``text/plain``, logged at error level with a
traceback, and no hook to change it (aio-libs/aiohttp#3287).  That is a client's bad
input, not a bug: `AdminRunner` serves the app through a `RequestHandler` whose
``handle_error`` answers ``{"error": {"code", "message"}}`` with a 4xx — 414 for the
request line, 431 for a header line, 400 otherwise — and logs it at info, without a
traceback.  The parser reports which limit a line broke, not which line it was: the two
limits differ so that the limit tells.  (A body it cannot decode reaches the route, which
answers 400 `MalformedRequest`; the protocol's report of it afterwards is info too.)
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from aiohttp import web, web_protocol
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestPayloadError

from billing.api.app import SERVER
from billing.api.edge import REQUEST_ID_HEADER, error_body, json_response
from billing.api.errors import HeaderTooLarge, MalformedRequest, RequestLineTooLong

log = logging.getLogger("pvgate.billing.api")

REQUEST_LINE_MAX = 4096  # bytes; this API's paths and queries need a few hundred at most
HEADER_LINE_MAX = 8190  # bytes; aiohttp's default, for what proxies and browsers add


def parser_refusal(exc: HttpProcessingError, request_line_max: int) -> MalformedRequest:
    """What the client is told about a request the parser refused."""
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else "its"
        if str(limit) == str(request_line_max):
            return RequestLineTooLong(f"the request line is over {limit} bytes")
        return HeaderTooLarge(f"a header line is over {limit} bytes")
    lines = (exc.message or "").strip().splitlines()
    detail = lines[0].rstrip(": ") if lines else ""
    default = MalformedRequest.default_message
    return MalformedRequest(f"{default}: {detail}" if detail else default)


class _JsonErrorsHandler(web_protocol.RequestHandler):
    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A parser refusal as a JSON 4xx logged at info; anything else logged as a bug."""
        request_id = uuid.uuid4().hex
        if isinstance(exc, HttpProcessingError) and status < 500:
            error = parser_refusal(exc, self.max_line_size)
            status, code, text = error.http_status, error.code, error.message
            log.info("request %s from %s refused: %s", request_id, request.remote, text)
        else:  # unreachable past api_middleware, which answers every handler failure
            super().handle_error(request, status, exc, message)  # logs it with its traceback
            code, text = "internal_error", f"internal error; quote request id {request_id}"
        headers = {REQUEST_ID_HEADER: request_id, "Server": SERVER}
        response = json_response(status, error_body(code, text), headers)
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        # A body that cannot be decoded was answered 400 already (`MalformedRequest`); the
        # protocol then drains the rest of it, meets the same error again and reports it.
        if isinstance(kw.get("exc_info"), RequestPayloadError):
            log.info("dropped the rest of a request body that cannot be decoded")
            return
        super().log_exception(*args, **kw)


class _JsonErrorsServer(web.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _JsonErrorsHandler(self, loop=self._loop, **self._kwargs)


class AdminRunner(web.AppRunner):
    """`web.AppRunner` for the admin app: parser refusals in JSON, the admin's line limits."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("max_line_size", REQUEST_LINE_MAX)
        kwargs.setdefault("max_field_size", HEADER_LINE_MAX)
        if kwargs["max_line_size"] == kwargs["max_field_size"]:
            raise ValueError("max_line_size and max_field_size must differ: the limit tells")
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        built = await super()._make_server()  # starts the app, as every AppRunner does
        return _JsonErrorsServer(
            built.request_handler,
            request_factory=built.request_factory,
            handler_cancellation=built.handler_cancellation,
            loop=built._loop,
            **built._kwargs,
        )
