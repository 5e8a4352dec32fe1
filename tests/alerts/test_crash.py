"""At least once across a crash, never a new event: ``kill -9`` of ``pvgate billing`` after
a webhook reached the receiver but before billing learnt the answer.

Real processes: ``python -m pvgate.cli billing --config FILE`` on a SQLite ledger and the
session's Redis.  The receiver (in this test) holds the request while billing is killed; a
restarted billing sends the delivery again, with the same ``webhook-id``, and records the
first attempt as interrupted.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import tomli_w

from metering import BalanceStore
from metering.keys import USAGE_STREAM
from pvgate.embedded import RedisServer, free_port
from tests.alerts.servers import Receiver
from tests.conftest import single_client
from tests.e2e.stack import pvgate

ENT = "ent-crash"
_seq = itertools.count(1)


class Billing:
    def __init__(self, tmp: Path, redis: RedisServer) -> None:
        self.port = free_port()
        self.config = tmp / "billing.toml"
        self.log = tmp / "billing.log"
        self.config.write_text(
            tomli_w.dumps(
                {
                    "listen": f"127.0.0.1:{self.port}",
                    "metrics_listen": f"127.0.0.1:{free_port()}",
                    "database_url": f"sqlite:///{tmp / 'ledger.db'}",
                    "log_level": "warning",
                    "redis": {"url": redis.url},
                    # A stable name: a restarted billing takes back its own leases at once.
                    "consumer": {"name": "billing-crash"},
                    "alerts": {
                        "allow_http": True,
                        "allow_addresses": ["127.0.0.1"],
                        "poll_interval_s": 0.05,
                    },
                }
            )
        )
        pvgate("migrate", "--config", str(self.config))
        self.token = pvgate("token", "create", "--role", "ops", "--config", str(self.config))
        self.token = self.token.strip().splitlines()[-1]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PVGATE_")}
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pvgate.cli", "billing", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def kill(self, how: signal.Signals = signal.SIGKILL) -> None:
        assert self.process is not None
        self.process.send_signal(how)
        self.process.wait(30)

    async def ready(self, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                assert self.process is not None
                assert self.process.poll() is None, self.log.read_text()
                try:
                    async with session.get(f"http://127.0.0.1:{self.port}/healthz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"billing not ready: {self.log.read_text()}")

    async def call(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method, f"http://127.0.0.1:{self.port}{path}", json=body, headers=headers
            ) as resp,
        ):
            reply = await resp.json()
            assert resp.status == status, (method, path, resp.status, reply)
            return reply


async def report_views(store: BalanceStore, redis: Any, n: int) -> None:
    debit = await store.debit(ENT, n)
    assert debit.granted == n
    entry: dict[Any, Any] = {
        "gateway_id": "gw-crash",
        "seq": next(_seq),
        "ts": int(time.time() * 1000),
        "rows": orjson.dumps([[ENT, b, k] for b, k in debit.takes]).decode(),
    }
    await redis.xadd(USAGE_STREAM, entry)


async def test_killed_after_sending_it_sends_again_with_the_same_webhook_id(
    tmp_path: Path, redis_node: RedisServer
):
    redis_node.client().flushall()
    redis = single_client(redis_node)
    receiver = Receiver()
    await receiver.start()
    billing = Billing(tmp_path, redis_node)
    billing.start()
    try:
        await billing.ready()
        enterprise = {"id": ENT, "id_type": "qidian", "name": "Crash Ltd", "industry": "retail"}
        await billing.call("POST", "/v1/enterprises", {**enterprise, "verified": True}, 201)
        await billing.call("POST", f"/v1/enterprises/{ENT}/gifts", {"pv": 150, "reason": "r"}, 201)
        settings = {"threshold_pv": 100, "channels": [{"type": "webhook", "url": receiver.hook}]}
        put = await billing.call("PUT", f"/v1/enterprises/{ENT}/alerts", settings)
        receiver.secrets.append(put["channels"][0]["signing_secret"])

        receiver.hold = asyncio.Event()  # the receiver takes the request and says nothing yet
        await report_views(BalanceStore(redis), redis, 51)  # 150 → 99: low_balance
        [first] = await receiver.wait_for(1, within=30)
        billing.kill()  # kill -9: the attempt was sent, its outcome never recorded
        receiver.hold.set()
        receiver.hold = None

        billing.start()
        await billing.ready()
        received = await receiver.wait_for(2, within=30)
        assert [r.event_id for r in received] == [first.event_id] * 2  # the same webhook-id
        assert all(r.verified_by for r in received)
        assert received[1].body == first.body

        deadline = time.monotonic() + 30
        while True:
            history = await billing.call("GET", f"/v1/enterprises/{ENT}/alerts/events")
            [event] = history["items"]  # one event, before and after the crash
            [delivery] = event["deliveries"]
            if delivery["status"] == "sent":
                break
            assert time.monotonic() < deadline, delivery
            await asyncio.sleep(0.1)
        assert event["id"] == first.event_id
        assert event["kind"] == "low_balance"
        outcomes = [a["outcome"] for a in delivery["attempts"]]
        assert outcomes == ["interrupted", "sent"], delivery
        await asyncio.sleep(0.5)  # nothing more comes: no new event, no third send
        assert len(receiver.received) == 2
    finally:
        if billing.process is not None and billing.process.poll() is None:
            billing.kill(signal.SIGTERM)
        await receiver.stop()
        await redis.aclose()
