"""The client of a Sentinel-managed master, following a failover as it happens.

redis-py finds the master through the sentinels when it makes a connection, and drops a
connection whose server answers READONLY.  Neither covers a failover while the old master
stays up (``SENTINEL FAILOVER``, a network partition): the old master takes writes until
the sentinels turn it into a replica — up to their 10 s INFO period after the switch — and
everything written to it after the promotion is discarded when it resyncs.  So every
client subscribes to the sentinels' announcements (all of them: only the leader of a
failover tells its steps) and, for our master:

``+selected-slave``
    a replica is about to be promoted: writes are held — connections dropped, new ones
    refused (`MasterNotFoundError`, a Redis failure to the callers) — for at most
    `HOLD_S`, so that nothing lands on a master about to be forgotten;
``+promoted-slave``, ``+switch-master``
    the new master's address, used at once, before every sentinel agrees on it;
``-failover-abort-*``, ``+failover-end-for-timeout``
    the hold ends.

Listeners (the Meter's own connection) are told on each change (docs/architecture.md §10).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.sentinel import MasterNotFoundError, SentinelConnectionPool

from metering.metrics import REDIS_ERRORS

log = logging.getLogger("pvgate.sentinel")
HOLD_S = 5.0  # writes held from a replica's selection until its promotion, at most
_RETRY_S = 1.0  # between attempts to subscribe to a sentinel that does not answer
_EVENTS = (
    "+selected-slave",
    "+promoted-slave",
    "+switch-master",
    "+failover-end-for-timeout",
    "-failover-abort-*",
)


class FollowingPool(SentinelConnectionPool):
    """The master's connections, at the address the failover announced if there is one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self.announced: tuple[str, int] | None = None
        self.held_until = 0.0

    async def get_master_address(self) -> tuple[str, int]:
        if time.monotonic() < self.held_until:
            raise MasterNotFoundError(f"{self.service_name}: a failover is under way")
        announced = self.announced
        if announced is None:
            found: tuple[str, int] = await super().get_master_address()  # type: ignore[no-untyped-call]
            return found
        with contextlib.suppress(redis_errors.RedisError, OSError):
            if await self.sentinel_manager.discover_master(self.service_name) == announced:
                self.announced = None  # the sentinels agree now
        if self.master_address != announced:
            self.master_address = announced
            await self.disconnect(inuse_connections=False)
        return announced


class SentinelMaster(Redis):
    """The master's client (``master_for(redis_class=SentinelMaster,
    connection_pool_class=FollowingPool)``); `follow` starts listening."""

    connection_pool: FollowingPool

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._listeners: list[Callable[[], None]] = []
        self._following: list[asyncio.Task[None]] = []

    def follow(self) -> None:
        """Listen to every sentinel (once; the client's loop must be running)."""
        if not self._following:
            loop = asyncio.get_running_loop()
            sentinels = self.connection_pool.sentinel_manager.sentinels
            self._following = [loop.create_task(self._listen(s)) for s in sentinels]

    def on_switch(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever the master's connections must be made again."""
        self._listeners.append(listener)

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        for task in self._following:
            task.cancel()
        for task in self._following:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._following = []
        await super().aclose(close_connection_pool)
        for sentinel in self.connection_pool.sentinel_manager.sentinels:
            await sentinel.aclose()

    async def _listen(self, sentinel: Redis) -> None:
        while True:
            try:
                async with sentinel.pubsub() as pubsub:
                    await pubsub.subscribe(*_EVENTS[:-1])
                    await pubsub.psubscribe(_EVENTS[-1])
                    async for message in pubsub.listen():
                        if message.get("type") in ("message", "pmessage"):
                            await self._event(message["channel"], message["data"])
            except (redis_errors.RedisError, OSError) as exc:
                log.debug("announcements from a sentinel interrupted: %s", exc)
            await asyncio.sleep(_RETRY_S)

    async def _event(self, channel: Any, data: Any) -> None:
        event, words = _text(channel), _text(data).split()
        pool = self.connection_pool
        if event == "+switch-master":  # <master> <old ip> <old port> <new ip> <new port>
            if words[:1] != [pool.service_name] or len(words) < 5:
                return
            await self._moved((words[3], int(words[4])), event)
            return
        # <role> <name> <ip> <port> @ <master> <master ip> <master port>
        if len(words) < 8 or words[5] != pool.service_name:
            return
        if event == "+selected-slave":
            log.warning("Redis failover of %s: writes held until a replica is promoted", words[5])
            pool.held_until = time.monotonic() + HOLD_S
            pool.master_address = None
            await pool.disconnect(inuse_connections=True)
            self._tell()
        elif event == "+promoted-slave":
            await self._moved((words[2], int(words[3])), event)
        else:  # the failover ended without a switch
            pool.held_until = 0.0

    async def _moved(self, address: tuple[str, int], event: str) -> None:
        pool = self.connection_pool
        pool.held_until = 0.0
        if pool.announced == address or pool.master_address == address:
            return  # told already (the promotion, then the switch, by each sentinel)
        log.warning("Redis master %s is %s:%d now (%s)", pool.service_name, *address, event)
        REDIS_ERRORS.labels("failover").inc()
        pool.announced = address
        pool.master_address = address
        await pool.disconnect(inuse_connections=True)
        self._tell()

    def _tell(self) -> None:
        for listener in self._listeners:
            listener()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
