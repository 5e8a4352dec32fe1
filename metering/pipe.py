"""A pipelined connection to one Redis node for the Meter's rounds of debits.

Each round is written as one buffer of packed commands; replies are parsed by hiredis as
they arrive and each round's replies go to its callback, in the order the rounds were
sent (Redis answers a connection's commands in order).  No task, stream or pool checkout
per round: on the hot path a round costs one write, and its replies one parse.  Error
replies come back in place, as `redis.exceptions.ResponseError` (`NoScriptError` for
NOSCRIPT); a connection that fails fails every round still waiting on it.

`PipeTarget.of` reads where to connect — host, port, database, credentials, TLS — from a
redis-py client's pool, so the pipe talks to the very node the client does.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import hiredis
from redis import exceptions as redis_errors
from redis.asyncio import Redis

Replies = list[Any]
Done = Callable[[Replies | BaseException], None]


def pack(*args: bytes | str | int) -> bytes:
    """One command in RESP: an array of bulk strings."""
    return pack_head(len(args), *args)


def pack_head(total: int, *args: bytes | str | int) -> bytes:
    """The start of a command of ``total`` arguments: its array header and ``args``."""
    parts = [b"*%d\r\n" % total]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class PipeTarget:
    """Where and how to connect: what a redis-py connection pool was configured with.

    A Sentinel-managed client has no fixed address: ``discover`` asks the sentinels for
    the master's each time the pipe connects, so that after a failover it reconnects to
    the new master.
    """

    host: str
    port: int
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: ssl.SSLContext | None = None
    discover: Callable[[], Awaitable[tuple[str, int]]] | None = None

    @classmethod
    def of(cls, client: Redis) -> PipeTarget | None:
        """The target of a single-node client, or None (a Unix socket, say: not supported)."""
        pool = client.connection_pool
        kwargs = pool.connection_kwargs
        discover = getattr(pool, "get_master_address", None)  # a SentinelConnectionPool
        if "path" in kwargs or ("host" not in kwargs and discover is None):
            return None
        tls = None
        if "SSL" in getattr(pool.connection_class, "__name__", ""):
            tls = _tls_context(kwargs)
        return cls(
            host=kwargs.get("host", ""),
            port=int(kwargs.get("port", 6379)),
            db=int(kwargs.get("db", 0) or 0),
            username=kwargs.get("username"),
            password=kwargs.get("password"),
            tls=tls,
            discover=discover if "host" not in kwargs else None,
        )


def _tls_context(kwargs: dict[str, Any]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=kwargs.get("ssl_ca_certs"))
    if kwargs.get("ssl_certfile"):
        context.load_cert_chain(kwargs["ssl_certfile"], kwargs.get("ssl_keyfile"))
    reqs = kwargs.get("ssl_cert_reqs", "required")
    if reqs in ("none", ssl.CERT_NONE):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif not kwargs.get("ssl_check_hostname", True):
        context.check_hostname = False
    return context


def _typed(reply: redis_errors.ResponseError) -> redis_errors.ResponseError:
    """The error reply as redis-py's class for it: the Meter tells NOSCRIPT (load the
    script, send again) and READONLY (a failover: the master moved) from the others."""
    text = str(reply)
    if text.startswith("NOSCRIPT"):
        return redis_errors.NoScriptError(text)
    if text.startswith("READONLY"):
        return redis_errors.ReadOnlyError(text)
    return reply


class RedisPipe(asyncio.Protocol):
    """Rounds of commands in, their replies out, in order, on one connection."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader(replyError=redis_errors.ResponseError, encoding="utf-8")
        self._rounds: deque[tuple[int, Replies, Done]] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(cls, target: PipeTarget) -> RedisPipe:
        """Connect and authenticate (AUTH, SELECT); raises OSError or a redis error.

        The caller bounds the time it may take (``asyncio.timeout``).
        """
        loop = asyncio.get_running_loop()
        host, port = target.host, target.port
        if target.discover is not None:
            host, port = await target.discover()
        _, pipe = await loop.create_connection(
            cls,
            host,
            port,
            ssl=target.tls,
            server_hostname=host if target.tls else None,
        )
        handshake: list[bytes] = []
        if target.password is not None:
            credentials = (target.username, target.password) if target.username else ()
            handshake.append(pack("AUTH", *(credentials or (target.password,))))
        if target.db:
            handshake.append(pack("SELECT", target.db))
        if handshake:
            replies = await pipe.call(b"".join(handshake), len(handshake))
            for reply in replies:
                if isinstance(reply, Exception):
                    pipe.abort()
                    raise reply
        return pipe

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, packed: bytes, replies: int, done: Done) -> None:
        """Write a round of ``replies`` commands; ``done`` gets their replies, or the error."""
        if self.closed or self.transport is None:
            done(redis_errors.ConnectionError("the Meter's Redis connection is closed"))
            return
        self._rounds.append((replies, [], done))
        self.transport.write(packed)

    async def call(self, packed: bytes, replies: int) -> Replies:
        """`send`, awaited (for the handshake and rare calls off the hot path)."""
        future: asyncio.Future[Replies] = asyncio.get_running_loop().create_future()

        def done(result: Replies | BaseException) -> None:
            if future.done():
                return
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

        self.send(packed, replies, done)
        return await future

    @property
    def pending(self) -> int:
        return len(self._rounds)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        rounds = self._rounds
        while rounds:
            reply = reader.gets()
            if reply is False:
                return
            if isinstance(reply, redis_errors.ResponseError):
                reply = _typed(reply)
            wanted, replies, done = rounds[0]
            replies.append(reply)
            if len(replies) == wanted:
                rounds.popleft()
                done(replies)
        if reader.gets() is not False:  # a reply to nothing that was asked
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self._gone.done():
            self._gone.set_result(None)
        error = redis_errors.ConnectionError(f"connection to Redis lost{f': {exc}' if exc else ''}")
        rounds, self._rounds = self._rounds, deque()
        for _, _, done in rounds:
            done(error)

    def abort(self) -> None:
        """Drop the connection now; the rounds waiting on it fail."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    async def aclose(self) -> None:
        """`abort`, and wait until the transport has let go of its socket."""
        self.abort()
        if self.transport is not None:
            await asyncio.shield(self._gone)
