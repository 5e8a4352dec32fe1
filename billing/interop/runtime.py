"""What the interop routes, the WeCom callback and the expiry job share in a billing process.

`billing.interop.service.install_interop` puts one `InteropRuntime` on the admin app under
`INTEROP`.  Its ``clock`` is the one every interop instant is read from; tests replace it
with a clock they move by hand (``runtime.clock = ...``) to stand at an expiry instant.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.interop.accounts import InteropPolicy
from billing.interop.clock import Clock, SystemClock
from billing.interop.records import WeComEventRow, WeComSettingsRow
from billing.interop.settings import InteropSection
from billing.wecom.messages import Event
from billing.wecom.ratelimit import TokenBuckets

Relay = Callable[[AsyncConnection, WeComEventRow, Event, WeComSettingsRow], Awaitable[None]]
"""Queues a relayed event for its relay target, in the event's own transaction."""

Changed = Callable[[str, str], Awaitable[None]]
"""Evaluates an enterprise's alerts (enterprise id, cause) after a change has committed."""


@dataclass(slots=True, kw_only=True)
class InteropRuntime:
    section: InteropSection
    policy: InteropPolicy
    clock: Clock = field(default_factory=SystemClock)
    relay: Relay | None = None  # None: accepted events are stored, not delivered
    relayed: Callable[[], None] | None = None  # after a relay committed: wake the sender
    changed: Changed | None = None  # after accounts changed: evaluate the alerts
    per_enterprise: TokenBuckets = field(init=False)
    overall: TokenBuckets = field(init=False)

    def __post_init__(self) -> None:
        s = self.section
        self.per_enterprise = TokenBuckets(s.callback_rate_per_s, s.callback_burst)
        self.overall = TokenBuckets(
            s.callback_global_rate_per_s, max(s.callback_burst, int(s.callback_global_rate_per_s))
        )

    @property
    def dedup_window(self) -> timedelta:
        return timedelta(seconds=self.section.dedup_window_s)


INTEROP = web.AppKey("interop", InteropRuntime)
