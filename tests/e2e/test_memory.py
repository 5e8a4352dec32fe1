"""A gigabyte through one worker, each way, costs it no memory: back-pressure, not buffers.

A 1 GiB response and a 1 GiB upload (Content-Length, then chunked) stream through a
worker while its resident set is sampled every 20 ms; it may grow by less than 50 MB over
what it was at rest.  The bodies are generated and counted on the fly at both ends, so
nothing but the gateway holds them.  ``max_body_bytes`` is raised to 2 GiB here — the
default refuses bodies over 10 MB — and nothing else is changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from pvgate.embedded import free_port
from tests.e2e.harness import redis_config

GIB = 1 << 30
PIECE = bytes(range(256)) * 1024  # 256 KiB
LIMIT = 50 * 1024 * 1024


async def origin() -> tuple[web.AppRunner, str]:
    async def download(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(GIB)})
        await response.prepare(request)
        for _ in range(GIB // len(PIECE)):
            await response.write(PIECE)
        await response.write_eof()
        return response

    async def upload(request: web.Request) -> web.StreamResponse:
        digest, size = hashlib.sha256(), 0
        async for piece in request.content.iter_chunked(1 << 20):
            digest.update(piece)
            size += len(piece)
        return web.json_response({"size": size, "sha256": digest.hexdigest()})

    app = web.Application(client_max_size=2 * GIB)
    app.router.add_get("/download", download)
    app.router.add_post("/upload", upload)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@contextlib.asynccontextmanager
async def peak_rss(pid: int) -> AsyncIterator[list[int]]:
    peak = [rss(pid)]

    async def sample() -> None:
        while True:
            peak[0] = max(peak[0], rss(pid))
            await asyncio.sleep(0.02)

    sampling = asyncio.create_task(sample())
    try:
        yield peak
    finally:
        sampling.cancel()


def expected_digest() -> str:
    digest = hashlib.sha256()
    for _ in range(GIB // len(PIECE)):
        digest.update(PIECE)
    return digest.hexdigest()


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, int]:
    """The head (and a small body), and how many body bytes there were (counted, not kept)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    if length < 4096:
        return head + await reader.readexactly(length), length
    seen = 0
    while seen < length:
        piece = await reader.read(1 << 20)
        assert piece, "the gateway closed mid-body"
        seen += len(piece)
    return head, seen


@pytest.mark.timeout(300)
async def test_a_gigabyte_each_way_costs_the_worker_no_memory(redis_node, gateways) -> None:
    runner, url = await origin()
    try:
        site = {"host": "big.test", "enterprise_id": "ent-m", "origin": url, "status": "approved"}
        gw = gateways(
            {
                "redis": redis_config(redis_node),
                "metering": False,
                "limits": {"max_body_bytes": 2 * GIB},
                "site": [site],
            }
        )
        await gw.wait_ready()
        worker = gw.workers()
        assert len(worker) == 1
        pid = worker[0]
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(b"GET /download HTTP/1.1\r\nHost: big.test\r\n\r\n")  # warm-up
        await writer.drain()
        writer.close()
        await asyncio.sleep(0.5)
        at_rest = rss(pid)
        digest = expected_digest()
        async with peak_rss(pid) as peak:
            started = time.monotonic()
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(b"GET /download HTTP/1.1\r\nHost: big.test\r\n\r\n")
            head, seen = await read_response(reader)
            assert head.startswith(b"HTTP/1.1 200 ")
            assert seen == GIB
            down = time.monotonic() - started

            started = time.monotonic()
            writer.write(
                b"POST /upload HTTP/1.1\r\nHost: big.test\r\nContent-Length: %d\r\n\r\n" % GIB
            )
            for _ in range(GIB // len(PIECE)):
                writer.write(PIECE)
                await writer.drain()
            answer, _ = await read_response(reader)
            up = time.monotonic() - started

            writer.write(
                b"POST /upload HTTP/1.1\r\nHost: big.test\r\n"
                b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            )
            for _ in range(GIB // len(PIECE)):
                writer.write(b"%x\r\n%s\r\n" % (len(PIECE), PIECE))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            tail = await reader.read()
            writer.close()
        assert digest.encode() in answer
        assert digest.encode() in tail
        grew = peak[0] - at_rest
        print(
            f"worker RSS at rest {at_rest / 2**20:.1f} MiB, peak {peak[0] / 2**20:.1f} MiB "
            f"(+{grew / 2**20:.1f}); 1 GiB down in {down:.1f} s, up in {up:.1f} s"
        )
        assert grew < LIMIT
    finally:
        await runner.cleanup()
