"""``pvgate demo`` as a user runs it: one process, nothing installed, a landing page metered.

The demo seeds a 3 PV gift (``--gift-pv 3``): three views of the landing page and its
stylesheet, script and logo are served, the fourth view gets the block page; the admin API,
reached with the ops token the banner prints, agrees.  Its low-balance alert (threshold 2)
reaches the demo's own webhook receiver, which prints it once verified.  Ctrl-C (SIGINT) or
SIGTERM stops everything with exit status 0, and a second run continues from the state in
``--dir``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from pvgate.embedded import free_port
from tests.e2e.harness import Gateway

PAGE_HEADERS = {"Accept": "text/html,application/xhtml+xml"}
ASSETS = {
    "/static/style.css": "text/css",
    "/static/app.js": "javascript",
    "/static/logo.svg": "image/svg+xml",
}
BANNER_TOKEN = re.compile(r"^  ops token\s+(\S+)\s*$", re.MULTILINE)


@dataclass
class Demo:
    gateway: Gateway
    admin_port: int
    workdir: Path

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def output(self) -> str:
        return self.gateway.log_text()

    def ops_token(self, within: float = 30.0) -> str:
        """The token from the banner line ``  ops token  pvg_…``."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            assert self.gateway.process.poll() is None, f"demo exited: {self.output()}"
            found = BANNER_TOKEN.search(self.output())
            if found:
                return found.group(1)
            time.sleep(0.1)
        raise AssertionError(f"no ops token printed within {within}s: {self.output()}")


def start_demo(workdir: Path, gift_pv: int = 3) -> Demo:
    port, admin_port, metrics_port = free_port(), free_port(), free_port()
    billing_metrics_port = free_port()  # not the default 9101: demos may run side by side
    log = workdir.parent / f"demo-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PVGATE_")}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pvgate.cli",
                "demo",
                "--dir",
                str(workdir),
                "--listen",
                f"127.0.0.1:{port}",
                "--admin-listen",
                f"127.0.0.1:{admin_port}",
                "--metrics-listen",
                f"127.0.0.1:{metrics_port}",
                "--billing-metrics-listen",
                f"127.0.0.1:{billing_metrics_port}",
                "--gift-pv",
                str(gift_pv),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return Demo(Gateway(process, port, metrics_port, log), admin_port, workdir)


def stop(demo: Demo, how: signal.Signals, within: float = 30.0) -> int:
    process = demo.gateway.process
    process.send_signal(how)
    try:
        return process.wait(within)
    except subprocess.TimeoutExpired as exc:
        process.kill()
        process.wait(10)
        raise AssertionError(
            f"demo still running {within}s after {how.name}: {demo.output()}"
        ) from exc


def refuses_connections(port: int) -> bool:
    """Nothing listens on the port.  A loopback connect to a port in the ephemeral range
    can, rarely, connect to itself (TCP simultaneous open): that is no listener either."""
    with socket.socket() as sock:
        sock.settimeout(1)
        if sock.connect_ex(("127.0.0.1", port)) != 0:
            return True
        return bool(sock.getsockname()[1] == port)


def wait_printed(demo: Demo, lines: tuple[re.Pattern[str], ...], within: float = 30.0) -> str:
    deadline = time.monotonic() + within
    while not all(line.search(demo.output()) for line in lines):
        assert time.monotonic() < deadline, f"not printed: {lines}: {demo.output()}"
        time.sleep(0.1)
    return demo.output()


@pytest.fixture
def demos(tmp_path: Path):
    """Start demos with `demos()`; any still running afterwards are killed."""
    started: list[Demo] = []

    def start() -> Demo:
        demo = start_demo(tmp_path / "state")
        started.append(demo)
        return demo

    yield start
    for demo in started:
        if demo.gateway.process.poll() is None:
            demo.gateway.process.kill()
            demo.gateway.process.wait(10)


async def view(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str], str]:
    async with session.get(url, headers=PAGE_HEADERS) as resp:
        return resp.status, dict(resp.headers), await resp.text()


async def balance(session: aiohttp.ClientSession, demo: Demo, token: str) -> dict[str, object]:
    url = f"{demo.admin_url}/v1/enterprises/demo-shop/balance"
    async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, object] = await resp.json()
        return body


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
async def test_demo_meters_its_landing_page_and_stops_cleanly(demos, how: signal.Signals):
    demo = demos()
    token = demo.ops_token()
    await demo.gateway.wait_ready()
    page = f"{demo.gateway.url}/"
    async with aiohttp.ClientSession() as session:
        for n in range(1, 4):
            status, headers, html = await view(session, page)
            assert status == 200, f"view {n}: {status} {html[:300]}"
            assert "Demo Shop" in html
            assert "text/html" in headers["Content-Type"]
            for asset, kind in ASSETS.items():
                assert f'"{asset}"' in html, f"the page no longer links {asset}"
                async with session.get(f"{demo.gateway.url}{asset}") as resp:
                    assert resp.status == 200, f"{asset} after view {n}: {resp.status}"
                    assert kind in resp.headers["Content-Type"]
                    assert await resp.read()
        status, headers, html = await view(session, page)
        assert status == 402, f"4th view: {status} {html[:300]}"
        assert headers["X-PV-Block-Reason"] == "exhausted"
        assert headers["Cache-Control"] == "no-store"

        shown = await balance(session, demo, token)
        assert (shown["available"], shown["blocked_reason"]) == (0, "exhausted"), shown
        buckets = shown["buckets"]
        assert isinstance(buckets, list)
        assert [(b["kind"], b["granted"], b["used"]) for b in buckets] == [("gift", 3, 3)]
        async with session.get(f"{demo.admin_url}/v1/enterprises/demo-shop/balance") as resp:
            assert resp.status == 401  # the admin API is not open without the token

    # 3 → 1 PV crossed the threshold of 2, then 0 (both within one usage flush, maybe):
    # each alert printed once, verified.
    low = re.compile(
        r"(?m)^alert low_balance: demo-shop has [01] PV available \(threshold 2\) — verified"
    )
    exhausted = re.compile(r"(?m)^alert exhausted: demo-shop has 0 PV available .* — verified")
    printed = wait_printed(demo, (low, exhausted))
    assert len(low.findall(printed)) == 1, printed
    assert len(exhausted.findall(printed)) == 1, printed
    assert "REJECTED" not in printed

    assert stop(demo, how) == 0, demo.output()
    assert "Traceback" not in demo.output(), demo.output()
    for port in (demo.gateway.port, demo.admin_port, demo.gateway.metrics_port):
        assert refuses_connections(port), f"port {port} still open after the demo exited"


async def test_a_second_run_continues_from_the_saved_state(demos):
    first = demos()
    first.ops_token()
    await first.gateway.wait_ready()
    async with aiohttp.ClientSession() as session:
        assert (await view(session, f"{first.gateway.url}/"))[0] == 200
    assert stop(first, signal.SIGTERM) == 0, first.output()

    second = demos()  # same --dir: the gift is not granted again, the PV used stay used
    token = second.ops_token()
    await second.gateway.wait_ready()
    async with aiohttp.ClientSession() as session:
        shown = await balance(session, second, token)
        assert (shown["available"], len(shown["buckets"])) == (2, 1), shown  # type: ignore[arg-type]
        statuses = [(await view(session, f"{second.gateway.url}/"))[0] for _ in range(3)]
        assert statuses == [200, 200, 402]
    assert stop(second, signal.SIGINT) == 0, second.output()
