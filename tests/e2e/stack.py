"""The whole product as a user runs it: billing and the gateway on real Redis.

`start_stack` writes a gateway and a billing TOML file, migrates a SQLite ledger, creates
an ops token with ``pvgate token create`` and starts ``pvgate run`` — or, with
``split=True``, ``pvgate gateway`` and ``pvgate billing`` as two processes, so that each
can be killed on its own.  `Stack.admin` calls the admin API with that token;
`Stack.onboard` registers an enterprise, grants it gift PV and approves its site through
the API, as ops would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import tomli_w

from pvgate.embedded import RedisClusterServers, RedisServer, free_port
from tests.e2e.harness import Gateway, Origin, redis_config


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PVGATE_")}


def pvgate(*args: str) -> str:
    """Run a ``pvgate`` command to completion; its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "pvgate.cli", *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"pvgate {' '.join(args)}: {done.stderr}"
    return done.stdout


def _start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pvgate.cli", *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(),
        )


def _stop(process: subprocess.Popen[bytes], how: signal.Signals) -> int:
    if process.poll() is None:
        process.send_signal(how)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.returncode


@dataclass
class Stack:
    gateway: Gateway  # `pvgate run` (supervisor, billing and workers), or `pvgate gateway`
    admin_port: int
    billing_metrics_port: int
    token: str
    billing_config: Path
    gateway_config: Path
    billing: subprocess.Popen[bytes] | None = None  # `pvgate billing`, when split
    billing_log: Path | None = None

    def workers(self) -> list[int]:
        return self.gateway.workers()

    def start_billing(self) -> None:
        """(Re)start ``pvgate billing`` (split stacks only)."""
        assert self.billing_log is not None
        self.billing = _start(["billing", "--config", str(self.billing_config)], self.billing_log)

    async def wait_billing(self, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{self.admin_url}/healthz") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise AssertionError("billing not ready")

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    async def admin(
        self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method, self.admin_url + path, json=body, params=params, headers=headers
            ) as resp,
        ):
            return resp.status, await resp.json()

    async def ok(self, method: str, path: str, body: Any = None, **params: str) -> Any:
        status, reply = await self.admin(method, path, body, params or None)
        assert 200 <= status < 300, (method, path, status, reply)
        return reply

    async def onboard(self, enterprise: str, host: str, origin: Origin, gift_pv: int) -> None:
        """Register, verify, gift and approve a site, through the admin API."""
        await self.ok(
            "POST",
            "/v1/enterprises",
            {"id": enterprise, "id_type": "qidian", "name": enterprise, "industry": "retail",
             "verified": True},
        )  # fmt: skip
        await self.ok(
            "POST", f"/v1/enterprises/{enterprise}/gifts", {"pv": gift_pv, "reason": "launch"}
        )
        site = {"enterprise_id": enterprise, "origin": origin.url}
        await self.ok("PUT", f"/v1/sites/{host}", site)
        await self.ok("POST", f"/v1/sites/{host}/review", {"decision": "approve", "note": "ok"})

    async def ledger_usage(self, enterprise: str) -> dict[str, int]:
        """PV per bucket as the usage endpoint reports it (every source, all time)."""
        reply = await self.ok(
            "GET", f"/v1/enterprises/{enterprise}/usage", since="2000-01-01T00:00:00Z"
        )
        totals: dict[str, int] = {}
        for item in reply["items"]:
            totals[item["bucket_id"]] = totals.get(item["bucket_id"], 0) + item["pv"]
        return totals

    async def redis_used(self, enterprise: str) -> dict[str, int]:
        reply = await self.ok("GET", f"/v1/enterprises/{enterprise}/balance")
        return {b["id"]: b["used"] for b in reply["buckets"]}

    async def wait_ledger(self, enterprise: str, within: float = 30.0) -> dict[str, int]:
        """The ledger's usage once it equals Redis's used counters (or the assertion)."""
        deadline = time.monotonic() + within
        while True:
            ledger, used = await self.ledger_usage(enterprise), await self.redis_used(enterprise)
            if ledger == {k: v for k, v in used.items() if v}:
                return ledger
            assert time.monotonic() < deadline, f"ledger {ledger} != Redis {used}"
            await asyncio.sleep(0.2)

    def stop(self, how: signal.Signals = signal.SIGTERM) -> int:
        if self.billing is not None:
            _stop(self.billing, how)
        return _stop(self.gateway.process, how)


def start_stack(
    tmp: Path,
    servers: RedisServer | RedisClusterServers,
    *,
    workers: int = 2,
    gateway: dict[str, Any] | None = None,
    billing: dict[str, Any] | None = None,
    database: Path | None = None,
    split: bool = False,
) -> Stack:
    """``pvgate run`` (or, ``split``, ``pvgate gateway`` and ``pvgate billing``) with
    default settings but for ports, Redis, ledger and ``workers``."""
    port, metrics_port, admin_port, billing_metrics = (free_port() for _ in range(4))
    redis = redis_config(servers)
    gateway_conf = {
        "listen": f"127.0.0.1:{port}",
        "metrics_listen": f"127.0.0.1:{metrics_port}",
        "workers": workers,
        "log_level": "warning",
        "redis": redis,
        **(gateway or {}),
    }
    billing_conf = {
        "listen": f"127.0.0.1:{admin_port}",
        "metrics_listen": f"127.0.0.1:{billing_metrics}",
        "database_url": f"sqlite:///{database or tmp / 'ledger.db'}",
        "log_level": "warning",
        "redis": redis,
        **(billing or {}),
    }
    gateway_path, billing_path = tmp / f"gateway-{port}.toml", tmp / f"billing-{port}.toml"
    gateway_path.write_text(tomli_w.dumps(gateway_conf))
    billing_path.write_text(tomli_w.dumps(billing_conf))
    pvgate("migrate", "--config", str(billing_path))
    token = pvgate("token", "create", "--role", "ops", "--config", str(billing_path))
    log = tmp / f"run-{port}.log"
    if split:
        stack = Stack(
            Gateway(
                _start(["gateway", "--config", str(gateway_path)], log), port, metrics_port, log
            ),
            admin_port,
            billing_metrics,
            token.strip().splitlines()[-1],
            billing_path,
            gateway_path,
            billing_log=tmp / f"billing-{port}.log",
        )
        stack.start_billing()
        return stack
    process = _start(
        ["run", "--gateway-config", str(gateway_path), "--billing-config", str(billing_path)], log
    )
    return Stack(
        Gateway(process, port, metrics_port, log),
        admin_port,
        billing_metrics,
        token.strip().splitlines()[-1],
        billing_path,
        gateway_path,
    )
