"""A Redis Sentinel group as child processes: one master, replicas, three sentinels.

For the tests of Redis as production runs it: the master and its replicas want a
password; the sentinels (``redis-server --sentinel``, each with a config file of its own,
as Sentinel insists) want one of their own.  `SentinelGroup.failover` forces a failover
and waits until the sentinels name the new master.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from pvgate.embedded import RedisServer, Security, _die_with_parent, free_port, redis_server_binary

MASTER = "pvgate-master"


class Sentinel:
    def __init__(self, directory: Path, master: RedisServer, password: str, own_password: str):
        self.port = free_port()
        self.dir = directory
        self.password = own_password
        self.conf = directory / f"sentinel-{self.port}.conf"
        self.conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {directory}\n"
            f"logfile {directory / f'sentinel-{self.port}.log'}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {master.port} 2\n"
            f"sentinel auth-pass {MASTER} {password}\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            f"sentinel failover-timeout {MASTER} 4000\n"
            f"sentinel parallel-syncs {MASTER} 1\n"
            f"requirepass {own_password}\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(
            port=self.port, password=self.password, socket_timeout=2, decode_responses=True
        )

    def start(self) -> None:
        self.process = subprocess.Popen(
            [redis_server_binary(), str(self.conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def _master_port_of(sentinel: Sentinel) -> int:
    found: Any = sentinel.client().sentinel_get_master_addr_by_name(MASTER)
    return int(found[1])


class SentinelGroup:
    """A master with ``replicas`` replicas, watched by three sentinels."""

    def __init__(
        self, replicas: int = 2, password: str = "data-pw", sentinel_password: str = "sentinel-pw"
    ):
        self.dir = Path(tempfile.mkdtemp(prefix="pvgate-sentinel-"))
        self.password, self.sentinel_password = password, sentinel_password
        security = Security(password=password)
        self.master = RedisServer(security=security, directory=self.dir, aof=True)
        self.replicas = [
            RedisServer(security=security, directory=self.dir, replica_of=self.master, aof=True)
            for _ in range(replicas)
        ]
        self.sentinels: list[Sentinel] = []

    @property
    def servers(self) -> list[RedisServer]:
        return [self.master, *self.replicas]

    @property
    def addresses(self) -> list[str]:
        return [s.address for s in self.sentinels]

    def start(self) -> SentinelGroup:
        for server in self.servers:
            server.start()
        self.wait_in_sync()
        self.sentinels = [
            Sentinel(self.dir, self.master, self.password, self.sentinel_password) for _ in range(3)
        ]
        for sentinel in self.sentinels:
            sentinel.start()
        self._wait(lambda: all(self._knows_everyone(s) for s in self.sentinels), 30)
        return self

    def _knows_everyone(self, sentinel: Sentinel) -> bool:
        try:
            client = sentinel.client()
            replicas: Any = client.sentinel_slaves(MASTER)
            peers: Any = client.sentinel_sentinels(MASTER)
        except redis.RedisError:
            return False
        return len(replicas) == len(self.replicas) and len(peers) == 2

    def wait_in_sync(self, timeout: float = 30.0) -> None:
        def synced() -> bool:
            try:
                info = self.master_now().client().info("replication")
            except redis.RedisError:
                return False
            return int(info.get("connected_slaves", 0)) == len(self.replicas)

        self._wait(synced, timeout)

    def master_port(self) -> int:
        return _master_port_of(self.sentinels[0])

    def master_now(self) -> RedisServer:
        """The server the sentinels name master."""
        if not self.sentinels:
            return self.master
        port = self.master_port()
        return next(s for s in self.servers if s.port == port)

    def failover(self, timeout: float = 30.0) -> RedisServer:
        """Force a failover; the new master once every sentinel names it."""
        old = self.master_port()
        self.sentinels[0].client().sentinel_failover(MASTER)
        self._wait(lambda: self._agreed_new(old), timeout)
        return self.master_now()

    def crash_master(self, timeout: float = 30.0) -> RedisServer:
        """SIGKILL the master; the new master once the sentinels have failed over."""
        old = self.master_port()
        self.master_now().kill()
        self._wait(lambda: self._agreed_new(old), timeout)
        return self.master_now()

    def _agreed_new(self, old: int) -> bool:
        try:
            ports = {_master_port_of(s) for s in self.sentinels}
        except (redis.RedisError, TypeError):
            return False
        return len(ports) == 1 and ports.pop() != old

    @staticmethod
    def _wait(condition, timeout: float) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError("the Sentinel group did not settle in time")
            time.sleep(0.1)

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
