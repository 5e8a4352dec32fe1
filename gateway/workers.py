"""The supervisor's worker processes: one per listening socket, restarted with back-off.

A worker that dies is started again on the same socket — at once the first time, then
after 1, 2, 4 … up to 30 seconds while it keeps dying, the delay forgotten once a worker
has lived a minute — so that a crash loop neither spins nor floods the logs.  A worker
that dies before the gateway was ever ready (start-up: bad settings, Redis Cluster out of
reach) stops the supervisor instead, with the worker's own error, which the worker leaves
in ``failed-<pid>`` in the metrics directory (docs/architecture.md §2).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import socket
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path

from gateway.settings import GatewaySettings

log = logging.getLogger("pvgate.server")

_FIRST_DELAY, _MAX_DELAY, _STABLE = 0.5, 30.0, 60.0


class StartupFailed(Exception):
    """A worker died before the gateway was ever ready: the message is its error."""


@dataclass(slots=True)
class _Slot:
    sock: socket.socket
    process: BaseProcess | None = None
    started: float = 0.0
    failures: int = 0  # deaths in a row
    restart_at: float = 0.0


class WorkerPool:
    def __init__(self, settings: GatewaySettings, metrics_dir: Path) -> None:
        self._settings = settings
        self._dir = metrics_dir
        self._slots: list[_Slot] = []
        self.ever_ready = False  # every worker was ready at least once

    @property
    def processes(self) -> list[BaseProcess]:
        return [s.process for s in self._slots if s.process is not None]

    def start(self, sockets: list[socket.socket]) -> None:
        self._slots = [_Slot(sock) for sock in sockets]
        for slot in self._slots:
            self._spawn(slot)

    def ready(self) -> list[BaseProcess]:
        return [
            p for p in self.processes if p.is_alive() and (self._dir / f"ready-{p.pid}").exists()
        ]

    def check(self) -> None:
        """Note readiness, start again what died (after its back-off); raises
        `StartupFailed` when a worker died before the gateway was ever ready."""
        now = time.monotonic()
        if not self.ever_ready and len(self.ready()) == len(self._slots):
            self.ever_ready = True
        for slot in self._slots:
            process = slot.process
            if process is None:
                if now >= slot.restart_at:
                    self._spawn(slot)
            elif process.is_alive():
                if slot.failures and now - slot.started > _STABLE:
                    slot.failures = 0
            else:
                self._died(slot, process, now)

    def _died(self, slot: _Slot, process: BaseProcess, now: float) -> None:
        from prometheus_client import multiprocess

        pid = process.pid
        error = self._error_of(pid)
        if (self._dir / f"ready-{pid}").exists():
            self.ever_ready = True  # it served: whatever killed it, this is no start-up
        if pid is not None:
            multiprocess.mark_process_dead(pid, str(self._dir))  # type: ignore[no-untyped-call]
            for name in ("ready", "flushed", "failed"):
                (self._dir / f"{name}-{pid}").unlink(missing_ok=True)
        slot.process = None
        if not self.ever_ready:
            raise StartupFailed(
                f"worker {pid} failed at start-up (exit {process.exitcode}): {error}"
            )
        slot.failures += 1
        delay = (
            0.0 if slot.failures == 1 else min(_FIRST_DELAY * 2 ** (slot.failures - 1), _MAX_DELAY)
        )
        slot.restart_at = now + delay
        log.error(
            "worker %s exited with %s (%s); starting another in %.1f s",
            pid,
            process.exitcode,
            error,
            delay,
        )

    def _error_of(self, pid: int | None) -> str:
        marker = self._dir / f"failed-{pid}"
        return marker.read_text().strip() if marker.exists() else "no error reported"

    def _spawn(self, slot: _Slot) -> None:
        from gateway.worker import run_worker

        ctx = multiprocessing.get_context("spawn")
        process = ctx.Process(
            target=run_worker,
            args=(self._settings, str(self._dir), slot.sock, os.getpid()),
            daemon=False,
        )
        process.start()
        slot.process, slot.started = process, time.monotonic()

    async def stop(self) -> None:
        processes = self.processes
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self._settings.limits.shutdown_grace_s + 5
        for process in processes:
            await asyncio.to_thread(process.join, max(deadline - time.monotonic(), 0.1))
            if process.is_alive():
                log.error("worker %s did not stop in time; killed", process.pid)
                process.kill()
            process.join(5)
