"""The field types of the admin API's requests: strict numbers, clean text, ids and times.

A request takes exactly what its field says, and `loose_fields` holds every route to it
when the route is declared, so strictness is never lost to a field written as a plain
``int``, ``bool`` or ``str``:

- numbers and booleans of a JSON body are `StrictInt` / `StrictBool`: ``true`` is not 1,
  ``"100"`` is not 100, ``"yes"`` is not true;
- in the path and the query everything arrives as text: `ParamInt` takes only ASCII
  decimal digits (``-`` first at most) — not ``1.5``, ``1.0``, ``+5``, ``1_000`` nor
  ``true`` — and `ParamBool` only ``true`` or ``false``;
- free text is `Text`: no control character (C0 including tab and line breaks, DEL, C1).
  Names, reasons and notes are one-line labels that end up in logs, audit rows and alert
  messages, where a line break or an escape sequence is injection, not content; and a NUL
  gets the same answer on SQLite (which would store it) as on PostgreSQL (which refuses it);
- ids (`Id`, `BucketId`) have their charset, times (`Timestamp`, `QueryTime`) their range.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    Strict,
    StringConstraints,
)

TEXT_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"
NO_CONTROL_CHARACTERS = "control characters (U+0000-U+001F, U+007F-U+009F) are not allowed"

Text = Annotated[str, StringConstraints(pattern=TEXT_PATTERN)]
"""Free text (a name, a reason, a reference…); give its lengths with ``Field``."""

Id = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
]
"""A ledger id (enterprise, order, partner…) as a path parameter or field."""

BucketId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
]
"""A balance bucket (package or gift) id, as metering accepts it."""

WeComUserId = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")
]
"""A WeCom ``userid``: 1-64 letters, digits and ``. _ - @``."""

CorpId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
"""A WeCom corp id."""

_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def _utc_in_range(value: datetime) -> datetime:
    try:
        value = value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("date out of range") from exc
    if not _EARLIEST <= value < _LATEST:
        raise ValueError("date must fall between 1970 and 9000")
    return value


def _naive_is_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


Timestamp = Annotated[AwareDatetime, AfterValidator(_utc_in_range)]
"""An ISO 8601 time with its offset (a payment, an expiry), within what the ledger stores."""

QueryTime = Annotated[datetime, AfterValidator(_naive_is_utc), AfterValidator(_utc_in_range)]
"""A time bound of a query: without an offset it is UTC."""

_DECIMAL = re.compile(r"-?[0-9]{1,18}")


def _int_from_text(value: object) -> object:
    if isinstance(value, str):
        if not _DECIMAL.fullmatch(value):
            raise ValueError("expected a whole number in decimal digits")
        return int(value)
    return value


def _bool_from_text(value: object) -> object:
    if isinstance(value, str):
        if value not in ("true", "false"):
            raise ValueError("expected true or false")
        return value == "true"
    return value


_FROM_TEXT = (_int_from_text, _bool_from_text)

ParamInt = Annotated[int, BeforeValidator(_int_from_text), Strict()]
"""An integer in the path or the query."""

ParamBool = Annotated[bool, BeforeValidator(_bool_from_text), Strict()]
"""A boolean in the path or the query."""


def check_strict(
    where: str,
    body: type[BaseModel] | None,
    query: type[BaseModel] | None,
    path: type[BaseModel],
) -> None:
    """Refuse, at declaration, a route whose request models have `loose_fields`."""
    for model, params in ((body, False), (query, True), (path, True)):
        if model is None:
            continue
        loose = loose_fields(model, params=params)
        if loose:
            kinds = "ParamInt, ParamBool" if params else "StrictInt, StrictBool"
            raise TypeError(
                f"{where}: {model.__name__} fields {loose} accept too much; use {kinds}, "
                "and Text, an id type or a pattern for strings"
            )


def loose_fields(model: type[BaseModel], *, params: bool) -> list[str]:
    """The fields of a request model (``params``: of the path or query) taking too much.

    A number or boolean must be strict (`ParamInt` / `ParamBool` in parameters), a string
    must carry a pattern (`Text`, an id type, or ``Field(pattern=...)``).
    """
    return [
        name
        for name, field in model.model_fields.items()
        if _loose(field.annotation, field.metadata, params)
    ]


def _loose(annotation: Any, metadata: Sequence[Any], params: bool) -> bool:
    if typing.get_origin(annotation) is Annotated:
        base, *extra = typing.get_args(annotation)
        return _loose(base, [*metadata, *extra], params)
    if annotation in (int, float, bool):
        from_text = any(isinstance(m, BeforeValidator) and m.func in _FROM_TEXT for m in metadata)
        if params:
            return not from_text
        return from_text or not any(isinstance(m, Strict) and m.strict for m in metadata)
    if annotation is str:
        return not any(getattr(m, "pattern", None) for m in metadata)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return bool(loose_fields(annotation, params=params))
    return any(_loose(arg, (), params) for arg in typing.get_args(annotation))
