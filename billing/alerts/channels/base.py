"""What every channel adapter takes and answers, and the human message of an event."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol
from zoneinfo import ZoneInfo

from billing.alerts.kinds import Registry
from billing.alerts.rows import ChannelRow, EventRow

Result = Literal["sent", "retry", "failed", "disabled"]
MAX_MARKDOWN = 4096  # bytes of UTF-8: WeCom's limit for a markdown message
EXCERPT = 2000  # characters of a reply kept with its attempt


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """One attempt: the delivery, its event and its channel (None: removed since)."""

    delivery_id: str
    attempt: int
    event: EventRow
    channel: ChannelRow | None
    channel_type: str
    target: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    result: Result
    status_code: int | None = None
    error: str = ""
    response: str = ""
    retry_after: float | None = None  # seconds the receiver asked us to wait


class Channel(Protocol):
    type: str

    async def send(self, job: Job, now: datetime) -> Outcome: ...


def excerpt(text: str) -> str:
    return text[:EXCERPT]


class Renderer:
    """An event as WeCom markdown in Chinese and English, within `MAX_MARKDOWN` bytes."""

    def __init__(self, registry: Registry, tz: str) -> None:
        self.registry = registry
        self.zone = ZoneInfo(tz)

    def markdown(self, event: EventRow) -> str:
        data = dict(event.payload.get("data", {}))
        message = self.registry.describe(event.kind, data)
        at = event.occurred_at.astimezone(self.zone).strftime("%Y-%m-%d %H:%M:%S")
        head = f"### 【pvgate】{message.title_zh} · {message.title_en}"
        tail = [
            f"> 时间 Time: {at} ({self.zone.key})",
            f"> 企业 Enterprise: {event.enterprise_id}",
            f"> 事件 Event: {event.id}",
        ]
        lines = [head, *message.lines_zh, *message.lines_en, *tail]
        text = "\n".join(lines)
        while len(text.encode()) > MAX_MARKDOWN and len(lines) > len(tail) + 1:
            lines.pop(-len(tail) - 1)  # drop body lines from the end, keep head and tail
            text = "\n".join(lines)
        raw = text.encode()
        if len(raw) > MAX_MARKDOWN:
            text = raw[:MAX_MARKDOWN].decode("utf-8", errors="ignore")
        return text
