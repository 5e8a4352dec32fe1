"""Kinds as data: a kind registered here, by a test, is evaluated, scheduled and delivered by
the machinery untouched — as the interop feature adds ``interop_member_removed`` and its
expiry kinds.  Also the registry's checks and the ``[alerts]`` settings' messages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest

from billing.alerts import REGISTRY, AlertKind, Context, Message, Observation, Source, SourceEnv
from billing.alerts.kinds import SETTINGS, Registry
from billing.settings import load_billing_settings
from metering.config import ConfigError
from tests.alerts.conftest import RigFactory
from tests.alerts.rig import BUILTIN, ENT, Clock, alert_settings, robot, webhook
from tests.alerts.servers import Receiver, WeCom

# What the "members" source reads: enterprise → {userid: (holds an account, until)}.
MEMBERS: dict[str, dict[str, tuple[bool, datetime]]] = {}


async def load_members(
    env: SourceEnv, enterprise_ids: Sequence[str], now: datetime
) -> Mapping[str, Any]:
    return {e: dict(MEMBERS[e]) for e in enterprise_ids if e in MEMBERS}


def observe_members(ctx: Context) -> list[Observation]:
    found = []
    for userid, (active, until) in ctx.fact("members").items():
        lost = not active or until <= ctx.now
        state = "removed" if lost else "assigned"
        found.append(Observation(userid, state, {"userid": userid, "until": until.isoformat()}))
    return found


def due_members(ctx: Context) -> datetime | None:
    future = [until for active, until in ctx.fact("members").values() if active and until > ctx.now]
    return min(future) if future else None


def say_removed(data: Mapping[str, Any]) -> Message:
    return Message(
        "成员失去互通账号",
        "Member lost its interop account",
        (f"成员 {data['userid']} 已无互通账号。",),
        (f"Member {data['userid']} no longer holds an interop account.",),
    )


def member_kinds() -> Registry:
    registry = BUILTIN.copy()
    registry.add_source(Source(name="members", load=load_members))
    registry.add_kind(
        AlertKind(
            name="member_removed",
            source="members",
            initial="assigned",
            observe=observe_members,
            fires=lambda before, after: (before, after) == ("assigned", "removed"),
            describe=say_removed,
            due=due_members,
        )
    )
    return registry


async def test_a_kind_registered_in_a_test_is_evaluated_and_delivered(
    make_rig: RigFactory, clock: Clock, receiver: Receiver, wecom: WeCom
):
    rig = make_rig(alert_settings(wecom_base=wecom.url), registry=member_kinds())
    until = clock() + timedelta(days=3)
    MEMBERS[ENT] = {"alice": (True, until), "bob": (True, until + timedelta(days=1))}
    try:
        await rig.enterprise()
        key = "0f5e7a1c-3b2d-4c8e-9a6f-1d2e3f4a5b6c"
        saved = await rig.configure(webhook(receiver.hook), robot(key), threshold=0)
        receiver.secrets += list(saved.new_secrets.values())
        assert await rig.evaluate(SETTINGS) == []  # everyone holds an account

        MEMBERS[ENT]["bob"] = (False, until)  # bob's account freed
        [event] = await rig.evaluate("interop")
        assert (event.kind, event.subject) == ("member_removed", "bob")
        assert event.payload["data"]["userid"] == "bob"
        assert await rig.evaluate("interop") == []  # once

        clock.now = until + timedelta(seconds=1)  # alice's time runs out: the scheduler sees it
        [later] = await rig.alerts.scheduler.run_due()
        assert (later.kind, later.subject) == ("member_removed", "alice")

        assert await rig.deliver() == 4  # two events × (webhook, robot)
        assert sorted(r.payload["data"]["userid"] for r in receiver.received) == ["alice", "bob"]
        assert all(
            r.payload["type"] == "member_removed" and r.verified_by for r in receiver.received
        )
        texts = [body["markdown"]["content"] for _key, body in wecom.robot_messages]
        assert all("成员失去互通账号" in t and "interop account" in t for t in texts)
    finally:
        MEMBERS.clear()


async def test_the_built_in_kinds_do_not_see_a_registry_they_are_not_in(make_rig: RigFactory):
    rig = make_rig()  # the built-in kinds: no "members" source
    assert "member_removed" not in BUILTIN.names()
    assert "member_removed" not in REGISTRY.names()
    await rig.enterprise()
    await rig.configure(threshold=0)
    MEMBERS[ENT] = {"carol": (False, datetime.now().astimezone())}
    try:
        assert await rig.evaluate("interop") == []
    finally:
        MEMBERS.clear()


def test_the_registry_refuses_what_it_cannot_run():
    registry = REGISTRY.copy()

    def kind(name: str, source: str = "balance") -> AlertKind:
        return AlertKind(
            name=name,
            source=source,
            initial="a",
            observe=lambda ctx: [],
            fires=lambda before, after: False,
            describe=say_removed,
        )

    with pytest.raises(ValueError, match="registered already"):
        registry.add_kind(kind("low_balance"))
    with pytest.raises(ValueError, match="no source 'nowhere'"):
        registry.add_kind(kind("x", "nowhere"))
    with pytest.raises(ValueError, match="kind name"):
        registry.add_kind(kind("Bad-Name"))
    with pytest.raises(ValueError, match="kind name"):
        registry.add_kind(kind("test"))  # the test message's
    with pytest.raises(ValueError, match="registered already"):
        registry.add_source(Source(name="balance", load=load_members))
    assert registry.add_kind(kind("extra")).name == "extra"
    assert "extra" not in REGISTRY.names()  # the copy, not the process-wide one
    builtin = {"low_balance", "recovered", "exhausted", "package_expiring", "package_expired"}
    assert set(BUILTIN.names()) == {*builtin, "test"}
    assert set(REGISTRY.names()) >= builtin  # and the kinds other features registered


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[alerts]\nwecom_base = "qyapi.weixin.qq.com"', "alerts: wecom_base"),
        ("[alerts]\nretry_schedule_s = []", "alerts: retry_schedule_s"),
        ("[alerts]\nretry_schedule_s = [0, -5]", "alerts: retry_schedule_s"),
        ("[alerts]\nretry_jitter = 1.5", "alerts: retry_jitter"),
        ("[alerts]\nconcurrency = 0", "alerts: concurrency"),
        ("[alerts]\nlease_s = 20", "alerts: lease_s"),
        ('[alerts]\nallow_addresses = ["localhost"]', "alerts: allow_addresses"),
        ('[alerts]\nallow_http = "yes"', "alerts.allow_http"),
        ("[alerts]\ncolour = 1", "alerts.colour"),
        ('[review]\nallow_addresses = ["10.0.0.0/33"]', "review: allow_addresses"),
    ],
)
def test_alert_settings_name_the_bad_key(tmp_path, toml: str, key: str):
    path = tmp_path / "billing.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_billing_settings(path, env={})
    assert key in str(info.value), info.value


def test_alert_settings_from_the_environment(tmp_path):
    env = {
        "PVGATE_ALERTS_RETRY_SCHEDULE_S": "0, 1, 2.5",
        "PVGATE_ALERTS_ALLOW_ADDRESSES": "127.0.0.1,10.0.0.0/8",
        "PVGATE_ALERTS_WECOM_BASE": "http://127.0.0.1:9999",
    }
    settings = load_billing_settings(None, env=env).alerts
    assert settings.retry_schedule_s == (0.0, 1.0, 2.5)
    assert settings.allow_addresses == ("127.0.0.1", "10.0.0.0/8")
    assert settings.wecom_base == "http://127.0.0.1:9999"
    assert load_billing_settings(None, env={}).alerts.retry_schedule_s == (
        0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0,
    )  # fmt: skip
