"""The interop tests' world: the full admin app with a hand-moved clock, WeCom, a receiver.

`start_interop` starts the seeded admin app (tests/admin_api/conftest.py) with settings
that let outbound calls reach loopback (the receiver) and retry fast, puts one
`ManualClock` in the interop runtime and in the alerts (evaluator, scheduler, delivery
worker), and starts `FakeWeCom` (calling the app's callback) and two receivers: the
customer's relay target and an alert webhook.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from prometheus_client import REGISTRY
from standardwebhooks import Webhook

from billing.api.services import ALERTS
from billing.interop import jobs
from billing.interop.runtime import INTEROP, InteropRuntime
from billing.interop.settings import InteropSection
from billing.schema import alert_attempts, alert_deliveries
from billing.settings import AlertsSection, BillingSettings
from tests.admin_api.conftest import ENT_A, AdminFactory, AdminServer, Reply, expect
from tests.admin_api.fake_wecom import FakeWeCom, Keys, ManualClock, Receiver, fake_wecom, receiver

LOOPBACK_ALERTS = AlertsSection(
    allow_http=True,
    allow_addresses=("127.0.0.1",),
    retry_schedule_s=(0.0, 0.2, 0.2, 0.2),
    retry_jitter=0.0,
    poll_interval_s=0.05,
    scheduler_interval_s=3600.0,
)
US = timedelta(microseconds=1)
# The expiry job runs once at start and then only when a test asks (`Interop.settle`).
QUIET_JOB = InteropSection(expiry_check_s=3600.0)


@dataclass
class Interop:
    server: AdminServer
    clock: ManualClock
    wecom: FakeWeCom
    receiver: Receiver
    alert_hook: Receiver
    registered_at: datetime
    relay_secret: str = ""
    alert_secret: str = ""

    @property
    def runtime(self) -> InteropRuntime:
        return self.server.app[INTEROP]

    async def view(self, enterprise_id: str = ENT_A) -> dict[str, Any]:
        found: dict[str, Any] = await self.server.ok(
            "GET", f"/v1/enterprises/{enterprise_id}/interop"
        )
        return found

    async def holding(self, enterprise_id: str = ENT_A) -> list[str]:
        return [m["userid"] for m in (await self.view(enterprise_id))["members"]]

    async def set_trial(self, enterprise_id: str = ENT_A, **fields: Any) -> dict[str, Any]:
        body = {"reason": "as WeCom reports", **fields}
        for name, value in body.items():
            if isinstance(value, datetime):
                body[name] = value.isoformat()
        found: dict[str, Any] = await self.server.ok(
            "PATCH", f"/v1/enterprises/{enterprise_id}/interop", body
        )
        return found

    async def buy(
        self, accounts: int, *, years: int = 1, paid_at: datetime, enterprise_id: str = ENT_A
    ) -> dict[str, Any]:
        """An interop order of ``accounts`` for ``years``, paid at ``paid_at``."""
        body = {
            "enterprise_id": enterprise_id,
            "id_type": "wecom",
            "sku": "wecom_interop",
            "accounts": accounts,
            "years": years,
            "agreement_accepted": True,
        }
        order = await self.server.ok("POST", "/v1/orders", body, 201)
        payment = {"reference": f"pay-{order['id']}", "paid_at": paid_at.isoformat()}
        paid: dict[str, Any] = await self.server.ok(
            "POST", f"/v1/orders/{order['id']}/pay", payment
        )
        return paid

    async def assign(self, userid: str, enterprise_id: str = ENT_A) -> Reply:
        return await self.server.ops(
            "POST", f"/v1/enterprises/{enterprise_id}/interop/members", {"userid": userid}
        )

    async def assign_all(self, *userids: str) -> None:
        for userid in userids:
            expect(await self.assign(userid), 201)

    async def configure(self, enterprise_id: str = ENT_A, keys: Keys | None = None) -> None:
        keys = keys or Keys()
        body = {
            "token": keys.token,
            "encoding_aes_key": keys.aes_key,
            "corp_id": keys.corp_id,
            "relay_url": f"{self.receiver.url}/hooks/wecom",
        }
        shown = await self.server.ok("PUT", f"/v1/enterprises/{enterprise_id}/wecom", body)
        if shown["relay_secret"].startswith("whsec_"):
            self.relay_secret = shown["relay_secret"]

    async def configure_alerts(self, enterprise_id: str = ENT_A, **fields: Any) -> None:
        """Alerts on a webhook channel to `alert_hook` (threshold 0: no balance alert)."""
        body = {
            "threshold_pv": 0,
            "channels": [{"type": "webhook", "url": f"{self.alert_hook.url}/alerts"}],
            **fields,
        }
        shown = await self.server.ok("PUT", f"/v1/enterprises/{enterprise_id}/alerts", body)
        self.alert_secret = shown["channels"][0]["signing_secret"]

    async def evaluate(self, enterprise_id: str = ENT_A) -> list[str]:
        """An alert evaluation now (the scheduler's, at the clock's time): the interop kinds
        that fired (the balance kinds aside)."""
        alerts = self.server.app[ALERTS]
        events = await alerts.evaluator.evaluate([enterprise_id], cause="schedule")
        return [e.kind for e in events if e.kind.startswith("interop_")]

    async def events(self, enterprise_id: str = ENT_A) -> list[dict[str, Any]]:
        page = await self.server.ok("GET", f"/v1/enterprises/{enterprise_id}/wecom/events")
        items: list[dict[str, Any]] = page["items"]
        return items

    async def delivered(self, within: float = 10.0) -> None:
        """Wait until no delivery is pending: each sent and its outcome recorded (before the
        clock jumps past a lease, which would send an in-flight delivery again)."""
        deadline = asyncio.get_running_loop().time() + within
        pending = sa.select(sa.func.count()).where(alert_deliveries.c.status == "pending")
        while await self.server.db.scalar(pending):
            assert asyncio.get_running_loop().time() < deadline, "deliveries still pending"
            await asyncio.sleep(0.02)

    async def attempted(self, count: int, within: float = 10.0) -> None:
        """Wait until ``count`` delivery attempts have their outcome recorded, so that the
        next back-off counts from a time the test knows (before the clock jumps past it)."""
        deadline = asyncio.get_running_loop().time() + within
        done = sa.select(sa.func.count()).where(alert_attempts.c.outcome.is_not(None))
        while (await self.server.db.scalar(done) or 0) < count:
            assert asyncio.get_running_loop().time() < deadline, "attempts not recorded"
            await asyncio.sleep(0.02)

    async def settle(self) -> int:
        """One pass of the expiry job, at the clock's time; members removed."""
        removed, _ = await jobs.settle_due(self.server.db, self.runtime)
        return removed


def verified(receiver: Receiver, secret: str) -> list[dict[str, Any]]:
    """The JSON bodies received, each checked against its Standard Webhooks signature."""
    hook = Webhook(secret)
    return [hook.verify(r.body, r.headers) for r in receiver.requests]


async def received(receiver: Receiver, count: int, within: float = 10.0) -> None:
    """Wait until ``receiver`` has ``count`` requests (deliveries are asynchronous)."""
    deadline = asyncio.get_running_loop().time() + within
    while len(receiver.requests) < count:
        assert asyncio.get_running_loop().time() < deadline, (
            f"{len(receiver.requests)} of {count} deliveries arrived"
        )
        await asyncio.sleep(0.02)


def wecom_events_total(result: str) -> float:
    return REGISTRY.get_sample_value("pvgate_wecom_events_total", {"result": result}) or 0.0


@asynccontextmanager
async def start_interop(
    make_admin: AdminFactory, settings: BillingSettings | None = None
) -> AsyncIterator[Interop]:
    settings = settings or BillingSettings(interop=QUIET_JOB)
    settings = dataclasses.replace(settings, alerts=LOOPBACK_ALERTS)
    server = await make_admin(settings)
    enterprise = await server.ok("GET", f"/v1/enterprises/{ENT_A}")
    registered = datetime.fromisoformat(enterprise["created_at"])
    clock = ManualClock(registered + timedelta(hours=1))
    server.app[INTEROP].clock = clock
    alerts = server.app[ALERTS]
    alerts.clock = alerts.evaluator.clock = alerts.worker.clock = clock.now
    alerts.scheduler.clock = clock.now
    async with AsyncExitStack() as stack:
        wecom = await stack.enter_async_context(fake_wecom(server.url))
        wecom.clock = clock.now
        customer = await stack.enter_async_context(receiver())
        alert_hook = await stack.enter_async_context(receiver())
        yield Interop(server, clock, wecom, customer, alert_hook, registered)
