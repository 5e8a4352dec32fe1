"""What an operator gets wrong is reported in one line naming it, exit status 2, no
traceback: an unknown setting, a ledger not migrated, a listen address already taken."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w

from pvgate.embedded import RedisServer, free_port


def pvgate(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PVGATE_")}
    return subprocess.run(
        [sys.executable, "-m", "pvgate.cli", *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


def one_line_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    # Besides the JSON log lines of what ran before (the schema check's, say), one line.
    lines = [line for line in done.stderr.strip().splitlines() if not line.startswith("{")]
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture
def taken() -> Iterator[str]:
    """A loopback address something else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))
        sock.listen()
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def billing_config(tmp: Path, redis: RedisServer, **extra: object) -> Path:
    config = {
        "listen": f"127.0.0.1:{free_port()}",
        "metrics_listen": f"127.0.0.1:{free_port()}",
        "database_url": f"sqlite:///{tmp / 'ledger.db'}",
        "redis": {"url": redis.url},
        **extra,
    }
    path = tmp / "billing.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def test_an_unknown_setting(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[redis]\nurll = "redis://127.0.0.1:6379/0"\n')
    one_line_error(pvgate("gateway", "--config", str(path)), "redis.urll")


def test_billing_on_a_ledger_not_migrated(tmp_path: Path, redis_node: RedisServer) -> None:
    path = billing_config(tmp_path, redis_node)
    one_line_error(pvgate("billing", "--config", str(path)), "pvgate migrate")


def test_billing_on_a_taken_address(tmp_path: Path, redis_node: RedisServer, taken: str) -> None:
    path = billing_config(tmp_path, redis_node, listen=taken)
    assert pvgate("migrate", "--config", str(path)).returncode == 0
    one_line_error(pvgate("billing", "--config", str(path)), "listen address", taken)


def test_the_gateway_on_a_taken_address(tmp_path: Path, taken: str) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(tomli_w.dumps({"listen": taken, "metrics_listen": f"127.0.0.1:{free_port()}"}))
    one_line_error(pvgate("gateway", "--config", str(path)), "listen address", taken)
