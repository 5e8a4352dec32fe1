"""Alerts (docs/rules.md §4, docs/architecture.md §5): balance and expiry crossings, once
each, delivered at least once by signed webhooks, WeCom group robots and WeCom app messages.

    kinds.py       the extension API: `AlertKind`, `Source`, `Observation`, `Registry`
    builtin.py     the ``balance`` source and the kinds of docs/rules.md §4
    evaluator.py   facts → planned state changes; `Evaluator.touch` for the usage consumer
    outbox.py      state flips, events and deliveries in one transaction
    scheduler.py   time-driven kinds when due (``alert_settings.next_due_at``), sweep, purge
    deliveries.py  claims with a lease, robot limits, attempts and outcomes in SQL
    worker.py      concurrent, bounded delivery beside the consumer
    channels/      ``webhook``, ``wecom_robot``, ``wecom_app``
    config.py      settings and channels, secrets masked and rotated
    history.py     events with their deliveries and attempts (the API)
    service.py     `Alerts`, all of it for one billing process

`REGISTRY` is the process-wide registry, holding the built-in kinds; a feature adds its
own kinds to it (see `billing.alerts.kinds`).
"""

from billing.alerts.builtin import register_builtin
from billing.alerts.kinds import (
    AlertConfig,
    AlertKind,
    Context,
    Message,
    Observation,
    Registry,
    Source,
    SourceEnv,
)

REGISTRY = register_builtin(Registry())

__all__ = [
    "REGISTRY",
    "AlertConfig",
    "AlertKind",
    "Context",
    "Message",
    "Observation",
    "Registry",
    "Source",
    "SourceEnv",
]
