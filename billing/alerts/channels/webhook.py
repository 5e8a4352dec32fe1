"""``webhook``: a POST of the event's JSON with Standard Webhooks headers.

``webhook-id`` is the event id — the same on every retry, so a receiver drops repeats —,
``webhook-timestamp`` the wall-clock second of this attempt, and ``webhook-signature`` made
by the ``standardwebhooks`` package: ``v1,<base64 HMAC-SHA256>`` with the channel's secret,
and a second one with the previous secret during a rotation's overlap (the header takes
several, space-separated).  Through `billing.outbound`; a 2xx is sent, ``410 Gone``
disables the channel (the reason recorded), anything else is tried again.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import orjson
from standardwebhooks import Webhook

from billing.alerts.channels.base import Job, Outcome, excerpt
from billing.alerts.retry import parse_retry_after
from billing.outbound import OutboundClient, OutboundFailed, OutboundRefused, OutboundResponse


def _wall() -> datetime:
    return datetime.now(UTC)


def signature(event_id: str, signed_at: datetime, body: str, secrets: tuple[str, ...]) -> str:
    return " ".join(Webhook(s).sign(event_id, signed_at, body) for s in secrets)


class WebhookChannel:
    type = "webhook"

    def __init__(self, client: OutboundClient, wall: Callable[[], datetime] = _wall) -> None:
        self.client = client
        self.wall = wall  # receivers check the timestamp against their own clock

    async def send(self, job: Job, now: datetime) -> Outcome:
        assert job.channel is not None
        body = orjson.dumps(job.event.payload).decode()
        signed_at = self.wall()
        headers = {
            "Content-Type": "application/json",
            "webhook-id": job.event.id,
            "webhook-timestamp": str(int(signed_at.timestamp())),
            "webhook-signature": signature(
                job.event.id, signed_at, body, job.channel.secrets_at(now)
            ),
        }
        try:
            reply = await self.client.request(
                "POST", str(job.channel.config["url"]), body=body.encode(), headers=headers
            )
        except OutboundRefused as exc:
            return Outcome(result="failed", error=f"refused: {exc.message}")
        except OutboundFailed as exc:
            return Outcome(result="retry", error=exc.message)
        return judge(reply, now)


def judge(reply: OutboundResponse, now: datetime) -> Outcome:
    text = excerpt(reply.text())
    if 200 <= reply.status < 300:
        return Outcome(result="sent", status_code=reply.status, response=text)
    if reply.status == 410:
        return Outcome(
            result="disabled",
            status_code=410,
            response=text,
            error=f"the receiver answered 410 Gone at {now.isoformat()}: channel disabled",
        )
    return Outcome(
        result="retry",
        status_code=reply.status,
        response=text,
        error=f"HTTP {reply.status}",
        retry_after=parse_retry_after(reply.headers.get("Retry-After"), now),
    )
