"""Reading a request's parameters and body into a route's models (400s, 413s).

Each refusal is a `billing.errors.ValidationFailed` naming the first bad field (``path.x``,
``query.x``, ``body.x``) and, after it, the others; messages for the commonest pydantic
errors are in words a client understands.
"""

from __future__ import annotations

import typing
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from billing.api.errors import MalformedRequest, PayloadTooLarge
from billing.api.fields import NO_CONTROL_CHARACTERS, TEXT_PATTERN
from billing.errors import ValidationFailed

_FRIENDLY = {"extra_forbidden": "unknown field", "missing": "field required"}


def validated_path(
    model: type[BaseModel], names: list[str], request: web.Request
) -> dict[str, Any]:
    """The path parameters ``names``, typed by ``model``."""
    try:
        parsed = model.model_validate(dict(request.match_info))
    except ValidationError as exc:
        raise invalid("path", exc) from None
    return {name: getattr(parsed, name) for name in names}


def validated_query(model: type[BaseModel] | None, request: web.Request) -> BaseModel | None:
    """The query string as ``model``; without a model, any parameter is refused."""
    if model is None:
        if request.query:
            raise ValidationFailed(f"query.{next(iter(request.query))}", "unknown parameter")
        return None
    data: dict[str, Any] = {}
    for name in set(request.query.keys()):
        values = request.query.getall(name)
        field = model.model_fields.get(name)
        many = field is not None and _is_collection(field.annotation)
        data[name] = values if many or len(values) > 1 else values[0]
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid("query", exc) from None


def _is_collection(annotation: Any) -> bool:
    """list[str], set[int] | None…: a parameter that may repeat (``?tag=a&tag=b``)."""
    if typing.get_origin(annotation) in (list, set, tuple, frozenset):
        return True
    return any(_is_collection(arg) for arg in typing.get_args(annotation) if arg is not None)


async def read_body(request: web.Request) -> bytes:
    if not request.body_exists:
        return b""
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge(f"request body over {request.client_max_size} bytes") from exc
    except RequestPayloadError as exc:  # e.g. a Content-Encoding it does not decode to
        cause = exc.__cause__
        detail = cause.message if isinstance(cause, HttpProcessingError) else "broken encoding"
        raise MalformedRequest(f"the request body cannot be read: {detail}") from exc


def validated_body(
    model: type[BaseModel] | None, request: web.Request, raw: bytes
) -> BaseModel | None:
    """The JSON body as ``model``; a route without a model takes none (or ``{}``)."""
    if model is None:
        if raw.strip() and _loads_or_none(raw) != {}:
            raise ValidationFailed("body", "this route takes no request body")
        return None
    if not raw.strip():
        raise ValidationFailed("body", "a JSON object is required")
    if request.content_type != "application/json":
        raise ValidationFailed(
            "Content-Type", f"must be application/json, not {request.content_type!r}"
        )
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise invalid("body", exc) from None


def _loads_or_none(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def invalid(where: str, exc: ValidationError) -> ValidationFailed:
    """One ValidationFailed naming the first bad field, and the others after it."""
    problems = [
        (".".join([where, *(str(part) for part in err["loc"])]), _message(err))
        for err in exc.errors(include_url=False)
    ]
    (field, first), rest = problems[0], problems[1:6]
    if rest:
        first += "; also " + "; ".join(f"{f}: {m}" for f, m in rest)
    return ValidationFailed(field, first)


def _message(err: ErrorDetails) -> str:
    pattern = err.get("ctx", {}).get("pattern")
    if err["type"] == "string_pattern_mismatch" and pattern == TEXT_PATTERN:
        return NO_CONTROL_CHARACTERS  # what Text's pattern says, in words
    return _FRIENDLY.get(err["type"], err["msg"])
