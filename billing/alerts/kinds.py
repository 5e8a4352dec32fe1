"""Kinds of alert as data: the extension API of `billing.alerts`.

A kind says what it observes and when a change of what it observes is an event; the
machinery (evaluator, outbox, delivery) knows no kind by name.  To add kinds — the WeCom
interop feature adds ``interop_expiring``, ``interop_expired`` and
``interop_member_removed`` this way — register a `Source` of facts and the `AlertKind`\\ s
that read them, in a module of your own::

    from billing.alerts import REGISTRY, AlertKind, Message, Observation, Source

    async def load_batches(env: SourceEnv, enterprise_ids, now) -> dict[str, Batches]:
        ...  # one query for all of them; an enterprise left out is not evaluated

    REGISTRY.add_source(Source(name="interop", load=load_batches))
    REGISTRY.add_kind(AlertKind(
        name="interop_member_removed",
        source="interop",
        initial="assigned",
        observe=lambda ctx: [
            Observation(subject=m.userid, state="removed", detail={"userid": m.userid})
            for m in ctx.fact("interop").removed
        ],
        fires=lambda before, after: after == "removed",
        describe=lambda data: Message("成员失去互通账号", "Member lost its interop account",
                                      (f"成员 {data['userid']}",), (f"Member {data['userid']}",)),
        due=None,   # or: the next moment time alone changes what `observe` answers
    ))

and ask for an evaluation when the facts change: ``alerts.evaluator.evaluate([enterprise],
cause="interop")`` (or ``touch`` to coalesce); time-driven kinds return their next moment
from ``due`` and the scheduler evaluates them then, also after a restart.

How an observation becomes an event: each ``(enterprise, kind, subject)`` has a stored state
(``alert_states``; a subject seen for the first time starts in the kind's ``initial``).
When ``observe`` reports another state, ONE conditional UPDATE moves it — only from the
state that was read, only for a newer observation, only under the enterprise's current
settings — and when ``fires(before, after)`` holds, the same transaction writes the event
(its ``data``: the observation's ``detail`` plus ``enterprise_id`` and ``subject``) and one
delivery per enabled channel.  A subject ``observe`` does not mention keeps its state.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from billing.db import Database
from metering import BalanceStore

# Causes of an evaluation (`Context.cause`).  A kind may treat them differently: the
# balance kinds let a balance only rise — re-arm — on a top-up, not on usage.
USAGE = "usage"
PAYMENT = "payment"
GIFT = "gift"
ADJUSTMENT = "adjustment"
REFUND = "refund"
SETTINGS = "settings"
SCHEDULE = "schedule"  # a time-driven kind fell due
SWEEP = "sweep"  # the periodic safety net over every configured enterprise
TOP_UPS = frozenset({PAYMENT, GIFT, ADJUSTMENT, SETTINGS})

_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertConfig:
    """An enterprise's alert settings (``alert_settings``), as an evaluation sees them."""

    enterprise_id: str
    threshold_pv: int
    expiry_reminder_days: tuple[int, ...]
    version: int
    next_due_at: datetime | None


@dataclass(frozen=True, slots=True)
class Observation:
    """What a kind sees about one subject: its state now, and what an event would say."""

    subject: str  # "" for an enterprise-wide kind; at most 200 characters
    state: str  # at most 64 characters
    detail: Mapping[str, Any] = field(default_factory=dict)  # JSON: the event's data
    at: datetime | None = None  # when it was true (default: the evaluation's now)


@dataclass(frozen=True, slots=True, kw_only=True)
class Context:
    """What `AlertKind.observe` and `AlertKind.due` get for one enterprise."""

    config: AlertConfig
    now: datetime
    cause: str
    facts: Mapping[str, Any]  # each loaded source's facts about this enterprise

    @property
    def enterprise_id(self) -> str:
        return self.config.enterprise_id

    def fact(self, source: str) -> Any:
        return self.facts[source]


@dataclass(frozen=True, slots=True)
class Message:
    """A human message about an event, in Chinese and English (WeCom markdown lines)."""

    title_zh: str
    title_en: str
    lines_zh: tuple[str, ...] = ()
    lines_en: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SourceEnv:
    """What a source may read: the ledger and the balances."""

    db: Database
    store: BalanceStore


Loader = Callable[[SourceEnv, Sequence[str], datetime], Awaitable[Mapping[str, Any]]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Source:
    """Facts for kinds, loaded once per enterprise per evaluation (for every kind using it)."""

    name: str
    load: Loader  # (env, enterprise ids, now) → facts by enterprise id


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertKind:
    name: str
    source: str
    initial: str
    observe: Callable[[Context], Iterable[Observation]]
    fires: Callable[[str, str], bool]  # (stored state, observed state) → an event?
    describe: Callable[[Mapping[str, Any]], Message]  # the event's data → its message
    due: Callable[[Context], datetime | None] | None = None


def _test_message(data: Mapping[str, Any]) -> Message:
    return Message(
        "测试消息",
        "Test message",
        (f"企业 {data.get('enterprise_id')} 的告警通道已连通。",),
        (f"The alert channel of enterprise {data.get('enterprise_id')} works.",),
    )


TEST_KIND = "test"  # events of ``POST …/alerts/test``: a message, no state


class Registry:
    """The sources and kinds an evaluator uses; `REGISTRY` is the process-wide one."""

    def __init__(self) -> None:
        self._sources: dict[str, Source] = {}
        self._kinds: dict[str, AlertKind] = {}

    def add_source(self, source: Source) -> Source:
        if not _NAME.fullmatch(source.name):
            raise ValueError(f"source name {source.name!r}: 1-64 of a-z 0-9 _")
        if source.name in self._sources:
            raise ValueError(f"source {source.name!r} is registered already")
        self._sources[source.name] = source
        return source

    def add_kind(self, kind: AlertKind) -> AlertKind:
        if not _NAME.fullmatch(kind.name) or kind.name == TEST_KIND:
            raise ValueError(f"kind name {kind.name!r}: 1-64 of a-z 0-9 _, not {TEST_KIND!r}")
        if kind.name in self._kinds:
            raise ValueError(f"kind {kind.name!r} is registered already")
        if kind.source not in self._sources:
            raise ValueError(f"kind {kind.name!r}: no source {kind.source!r} (add it first)")
        self._kinds[kind.name] = kind
        return kind

    @property
    def kinds(self) -> tuple[AlertKind, ...]:
        return tuple(self._kinds.values())

    @property
    def sources(self) -> tuple[Source, ...]:
        return tuple(self._sources.values())

    def kind(self, name: str) -> AlertKind | None:
        return self._kinds.get(name)

    def names(self) -> tuple[str, ...]:
        return (*self._kinds, TEST_KIND)

    def describe(self, kind: str, data: Mapping[str, Any]) -> Message:
        if kind == TEST_KIND:
            return _test_message(data)
        known = self._kinds.get(kind)
        if known is None:  # an event of a kind no longer registered still says something
            return Message(kind, kind, (), ())
        return known.describe(data)

    def copy(self) -> Registry:
        """A registry with the same sources and kinds, to extend without touching this one."""
        other = Registry()
        other._sources = dict(self._sources)
        other._kinds = dict(self._kinds)
        return other
