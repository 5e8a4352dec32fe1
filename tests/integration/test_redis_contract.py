"""What the Meter relies on in redis-py and hiredis, in one place (pinned: redis>=8.1,<9).

The Meter's own connection (`metering.pipe`) takes its address, credentials, database and
TLS from a redis-py client's pool, and parses replies with hiredis; the client path uses
``pipeline(transaction=False).execute(raise_on_error=False)``.  If an upgrade changes any
of these, this module fails before the Meter does.
"""

from __future__ import annotations

import ssl

import hiredis
import pytest
from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis

from metering.pipe import PipeTarget, RedisPipe, pack
from pvgate.embedded import RedisServer


def client_for(url: str) -> Redis:
    return Redis(connection_pool=BlockingConnectionPool.from_url(url, decode_responses=True))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://10.0.0.1:6380/2", PipeTarget("10.0.0.1", 6380, 2)),
        ("redis://:secret@h:6379/0", PipeTarget("h", 6379, 0, None, "secret")),
        ("redis://gw:secret@h", PipeTarget("h", 6379, 0, "gw", "secret")),
    ],
)
def test_the_pipe_connects_where_the_client_does(url: str, expected: PipeTarget) -> None:
    assert PipeTarget.of(client_for(url)) == expected


def test_tls_settings_of_a_rediss_url_reach_the_pipe(tmp_path) -> None:
    target = PipeTarget.of(client_for("rediss://h:6390/0?ssl_cert_reqs=none"))
    assert target is not None
    assert isinstance(target.tls, ssl.SSLContext)
    assert target.tls.verify_mode == ssl.CERT_NONE
    strict = PipeTarget.of(client_for("rediss://h:6390/0"))
    assert strict is not None
    assert strict.tls is not None
    assert strict.tls.verify_mode == ssl.CERT_REQUIRED


def test_a_unix_socket_client_has_no_pipe() -> None:
    assert PipeTarget.of(client_for("unix:///tmp/redis.sock")) is None


def test_hiredis_hands_error_replies_back_in_place() -> None:
    reader = hiredis.Reader(replyError=redis_errors.ResponseError, encoding="utf-8")
    reader.feed(b"*2\r\n:1\r\n$1\r\na\r\n-NOSCRIPT No matching script\r\n")
    assert reader.gets() == [1, "a"]
    error = reader.gets()
    assert isinstance(error, redis_errors.ResponseError)
    assert str(error).startswith("NOSCRIPT")
    assert reader.gets() is False


async def test_pipe_and_client_pipeline_answer_alike() -> None:
    with RedisServer() as server:
        client = Redis(host=server.host, port=server.port, decode_responses=True)
        target = PipeTarget.of(client)
        assert target is not None
        pipe = await RedisPipe.open(target)
        replies = await pipe.call(pack("SET", "k", "v") + pack("EVALSHA", "0" * 40, 0), 2)
        assert replies[0] == "OK"
        assert isinstance(replies[1], redis_errors.NoScriptError)
        p = client.pipeline(transaction=False)
        p.get("k")
        p.evalsha("0" * 40, 0)
        got = await p.execute(raise_on_error=False)
        assert got[0] == "v"
        assert isinstance(got[1], redis_errors.NoScriptError)
        await pipe.aclose()
        await client.aclose()
