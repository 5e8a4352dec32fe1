"""The Lua scripts of ``metering/lua``: read once, called by SHA, reloaded on NOSCRIPT.

``_common.lua`` is prepended to every script, so each stays one self-contained body that
touches only the four keys of one enterprise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeAlias

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from metering.errors import MeterNotSent, MeterTimeout, MeterUnavailable, ScriptFailed
from metering.metrics import REDIS_ERRORS

RedisClient: TypeAlias = "Redis | RedisCluster"
Arg: TypeAlias = str | int


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str
    sha: str


def _load(name: str) -> Script:
    lua = resources.files("metering") / "lua"
    source = (lua / "_common.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest())


DEBIT_PV = _load("debit_pv")
CREDIT_BUCKET = _load("credit_bucket")
GIVE_BACK_PV = _load("give_back_pv")
FREEZE_BUCKETS = _load("freeze_buckets")
VOID_GIFTS = _load("void_gifts")
READ_BALANCE = _load("read_balance")
SET_SUSPENDED = _load("set_suspended")
ADJUST_BUCKET = _load("adjust_bucket")


def translate(exc: BaseException, what: str) -> Exception:
    """The metering error the caller sees for a redis (or asyncio timeout) exception.

    Counts it in ``pvgate_redis_errors_total`` by kind, so every edge that translates
    also reports.
    """
    if isinstance(exc, TimeoutError | redis_errors.TimeoutError):
        REDIS_ERRORS.labels("timeout").inc()
        return MeterTimeout(f"{what}: Redis did not answer in time")
    if isinstance(exc, redis_errors.ReadOnlyError):  # a failover: refused, nothing ran
        REDIS_ERRORS.labels("readonly").inc()
        return MeterNotSent(f"{what}: Redis is read-only: the master has moved")
    if isinstance(exc, redis_errors.ResponseError) and not isinstance(
        exc, redis_errors.NoScriptError | redis_errors.ClusterError
    ):
        REDIS_ERRORS.labels("script").inc()
        return ScriptFailed(f"{what}: {exc}")
    REDIS_ERRORS.labels("connection").inc()
    return MeterUnavailable(f"{what}: {type(exc).__name__}: {exc}")


async def call(
    client: RedisClient, script: Script, keys: Sequence[str], args: Sequence[Arg]
) -> Any:
    """Run a script by SHA; on NOSCRIPT (a flush, a failover) send its source instead.

    Redis errors come back as ``redis`` exceptions; callers translate them at their edge.
    """
    try:
        return await client.evalsha(script.sha, len(keys), *keys, *args)
    except redis_errors.NoScriptError:
        REDIS_ERRORS.labels("noscript").inc()
        # EVAL caches the source on the node that ran it, so the next EVALSHA succeeds.
        return await client.eval(script.source, len(keys), *keys, *args)
