"""The demo's alerts: a low-balance alert on the demo enterprise, by webhook to a small
receiver the demo runs on loopback, which prints every alert it gets once
``standardwebhooks`` has verified its signature.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from billing.alerts import config
from billing.audit import SystemAuditor
from billing.db import Database
from billing.outbound import OutboundPolicy
from billing.settings import AlertsSection
from pvgate.embedded import free_port

# The receiver is on loopback, which outbound calls refuse unless allowed.
DEMO_ALERTS = AlertsSection(allow_http=True, allow_addresses=("127.0.0.1",))


def threshold_for(gift_pv: int) -> int:
    """Half the demo's gift (rounded up): the views cross it halfway through."""
    return max(1, (gift_pv + 1) // 2)


class AlertReceiver:
    """``POST /alerts``: verify with the channel's signing secret, print, answer 204."""

    def __init__(self) -> None:
        self.port = free_port()
        self.secret = ""
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alerts"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/alerts", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            event: Any = Webhook(self.secret).verify(body, dict(request.headers))
        except WebhookVerificationError as exc:
            print(f"alert REJECTED ({exc}): {body[:200]!r}", flush=True)
            return web.Response(status=400)
        data = event.get("data", {})
        print(
            f"alert {event.get('type')}: {data.get('enterprise_id')} has "
            f"{data.get('available_pv')} PV available (threshold {data.get('threshold_pv')})"
            f" — verified, webhook-id {request.headers.get('webhook-id')}",
            flush=True,
        )
        return web.Response(status=204)


async def configure(
    db: Database, enterprise_id: str, receiver: AlertReceiver, gift_pv: int
) -> None:
    """The enterprise's alert: threshold and the webhook to ``receiver`` (the same channel,
    and so the same secret, on every run; only its URL follows the receiver's port)."""
    async with db.engine.connect() as conn:
        _settings, channels = await config.read(conn, enterprise_id)
    hooks = [c for c in channels if c.type == "webhook"]
    spec = config.SettingsSpec(
        threshold_pv=threshold_for(gift_pv),
        expiry_reminder_days=config.DEFAULT_REMINDER_DAYS,
        channels=(
            config.ChannelSpec(
                id=hooks[0].id if hooks else None,
                type="webhook",
                enabled=True,
                config={"url": receiver.url},
            ),
        ),
    )
    policy = OutboundPolicy.build(
        allow_http=DEMO_ALERTS.allow_http, allow_addresses=DEMO_ALERTS.allow_addresses
    )
    saved = await config.save(
        db, SystemAuditor("demo"), enterprise_id, spec, now=datetime.now(UTC), policy=policy
    )
    receiver.secret = saved.channels[0].secret


def describe(receiver: AlertReceiver, gift_pv: int) -> str:
    return f"{receiver.url}   prints each alert (low balance below {threshold_for(gift_pv)} PV)"
