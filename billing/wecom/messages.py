"""WeCom's XML: the envelope of a callback and the event inside it.

The envelope comes from the internet before anything is authenticated, so it is parsed
with no DTD at all — a document that declares one is refused, which rules out entity
expansion and external entities (the standard library's parser fetches nothing, but would
expand internal entities).  Bodies are capped before they get here
(`billing.wecom.callback`).

An event is ``<xml>`` with ``MsgType`` (``event`` for the callbacks relayed here), ``Event``
(``change_external_contact``, ``change_external_chat``, …), ``ChangeType`` (``add_external_
contact``, ``del_follow_user``, ``create``, ``update``, ``dismiss``, …), and, when it is
about one staff member, ``UserID``.  Its de-duplication key is its ``MsgId`` when it has
one, else the SHA-256 of the decrypted XML — what WeCom sends again when it retries.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any


class MessageError(ValueError):
    """XML that is not a WeCom callback."""


def parse_xml(data: bytes) -> ET.Element:
    """The root element of ``data``, refusing a DTD."""
    if b"<!doctype" in data.lower():
        raise MessageError("a document type declaration is not allowed")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise MessageError(f"not well-formed XML: {exc}") from None
    if root.tag != "xml":
        raise MessageError(f"the root element is <{root.tag}>, not <xml>")
    return root


def _text(root: ET.Element, tag: str) -> str | None:
    found = root.find(tag)
    if found is None or found.text is None:
        return None
    text = found.text.strip()
    return text or None


def envelope_ciphertext(body: bytes) -> str:
    """The ``Encrypt`` of a callback's body."""
    encrypted = _text(parse_xml(body), "Encrypt")
    if encrypted is None:
        raise MessageError("the body has no <Encrypt>")
    return encrypted


def element_value(element: ET.Element) -> Any:
    """An element as JSON: its text, or its children by tag (a repeated tag as a list)."""
    children = list(element)
    if not children:
        return (element.text or "").strip()
    value: dict[str, Any] = {}
    for child in children:
        item = element_value(child)
        if child.tag in value:
            previous = value[child.tag]
            value[child.tag] = [*previous, item] if isinstance(previous, list) else [previous, item]
        else:
            value[child.tag] = item
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """A decrypted WeCom callback."""

    msg_type: str
    event: str
    change_type: str
    userid: str | None  # the staff member it is about, if any
    key: str  # MsgId, or the hash of the XML
    fields: dict[str, Any]
    xml: str


def parse_event(message: bytes) -> Event:
    """The event in a decrypted message; `MessageError` if it is not XML of one."""
    root = parse_xml(message)
    msg_id = _text(root, "MsgId")
    key = f"id:{msg_id}" if msg_id else f"sha256:{hashlib.sha256(message).hexdigest()}"
    try:
        xml = message.decode("utf-8")
    except UnicodeDecodeError:
        raise MessageError("the message is not UTF-8") from None
    fields = element_value(root)
    userid = _text(root, "UserID")
    return Event(
        msg_type=(_text(root, "MsgType") or "")[:64],
        event=(_text(root, "Event") or "")[:64],
        change_type=(_text(root, "ChangeType") or "")[:64],
        userid=userid[:64] if userid else None,
        key=key[:80],
        fields=fields if isinstance(fields, dict) else {},
        xml=xml,
    )
