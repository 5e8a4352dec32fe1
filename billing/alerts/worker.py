"""The delivery worker: claims due deliveries, sends them concurrently, records outcomes.

At most ``concurrency`` attempts are in flight, and at most an eighth of them (at least one)
to any one target, so a receiver that hangs until its timeout holds a few slots and never
the others: one failing channel does not delay another.  The worker runs beside the usage
consumer, never inside its transaction.  It wakes when this process wrote an event
(`wake`) and otherwise looks every ``poll_interval_s`` (events written by other billing
processes).  Outcomes are recorded in batches, off the send path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Mapping

from billing.alerts import deliveries, metrics
from billing.alerts.channels.base import Channel, Outcome
from billing.alerts.deliveries import Claimed, ClaimRules, Finished, RetryRules
from billing.alerts.evaluator import Clock, utc_now
from billing.db import Database

log = logging.getLogger("pvgate.alerts.worker")

_GAUGE_EVERY = 5.0  # seconds between refreshes of pvgate_alert_outbox_due


class DeliveryWorker:
    def __init__(
        self,
        db: Database,
        channels: Mapping[str, Channel],
        claim_rules: ClaimRules,
        retry_rules: RetryRules,
        *,
        concurrency: int = 32,
        poll_interval: float = 1.0,
        send_within: float = 30.0,
        clock: Clock = utc_now,
    ) -> None:
        self.db, self.channels, self.clock = db, channels, clock
        self.claim_rules, self.retry_rules = claim_rules, retry_rules
        self.concurrency, self.poll_interval, self.send_within = (
            concurrency,
            poll_interval,
            send_within,
        )
        self.per_target = max(1, concurrency // 8)
        self._inflight: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._done: list[Finished] = []
        self._wake = asyncio.Event()
        self._recorded = asyncio.Event()
        self._gauge_at = 0.0

    @property
    def owner(self) -> str:
        return self.claim_rules.owner

    def wake(self) -> None:
        self._wake.set()

    async def attempt(self, claimed: Claimed, owner: str) -> Finished:
        """Send one attempt that ``owner`` claimed, now, and record it (the test route)."""
        finished = await self._send(claimed)
        await deliveries.record(self.db, owner, [finished], self.retry_rules)
        return finished

    async def run_once(self) -> int:
        """Claim what is due and start sending it; the number started."""
        free = self.concurrency - len(self._tasks)
        if free <= 0:
            return 0
        busy = [t for t, n in self._inflight.items() if n >= self.per_target]
        claimed = await deliveries.claim(self.db, self.claim_rules, self.clock(), free, busy)
        for item in claimed:
            self._inflight[item.job.target] += 1
            task = asyncio.create_task(self._run(item))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(claimed)

    async def drain(self) -> None:
        """Wait for what is in flight and record it (tests, shutdown)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))
        await self.flush()

    async def flush(self) -> None:
        done, self._done = self._done, []
        try:
            await deliveries.record(self.db, self.owner, done, self.retry_rules)
        except Exception:
            # Not recorded: the leases run out and the deliveries are sent again (same id).
            log.exception("could not record %d delivery outcomes", len(done))

    async def run(self, stop: asyncio.Event) -> None:
        with contextlib.suppress(Exception):
            released = await deliveries.release_leases(self.db, self.owner)
            if released:
                log.info("took back %d deliveries leased by an earlier run", released)
        recorder = asyncio.create_task(self._record_loop(stop))
        while not stop.is_set():
            started = 0
            try:
                started = await self.run_once()
                await self._refresh_gauge()
            except Exception:
                log.exception("alert delivery round failed; retrying")
            if started and len(self._tasks) < self.concurrency:
                continue  # more may be due
            await self._sleep(stop)
        with contextlib.suppress(TimeoutError):  # unfinished ones are retried (same id)
            await asyncio.wait_for(self.drain(), 3)
        recorder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await recorder
        await self.flush()

    async def _sleep(self, stop: asyncio.Event) -> None:
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        waits.append(asyncio.ensure_future(self._recorded.wait()))
        await asyncio.wait(waits, timeout=self.poll_interval, return_when=asyncio.FIRST_COMPLETED)
        for waiting in waits:
            waiting.cancel()
        self._wake.clear()
        self._recorded.clear()

    async def _record_loop(self, stop: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(0.005)
            if self._done:
                await self.flush()
                self._recorded.set()  # slots freed: claim again

    async def _run(self, claimed: Claimed) -> None:
        try:
            self._done.append(await self._send(claimed))
        finally:
            self._inflight[claimed.job.target] -= 1
            if self._inflight[claimed.job.target] <= 0:
                del self._inflight[claimed.job.target]

    async def _send(self, claimed: Claimed) -> Finished:
        job = claimed.job
        started = time.monotonic()
        if job.channel is None:
            outcome = Outcome(result="failed", error="channel removed")
        elif not job.channel.enabled and job.event.kind != "test":
            outcome = Outcome(
                result="disabled", error=f"channel disabled: {job.channel.disabled_reason}"
            )
        else:
            outcome = await self._send_on(job.channel.type, claimed)
        duration = int((time.monotonic() - started) * 1000)
        return Finished(
            claimed=claimed, outcome=outcome, finished_at=self.clock(), duration_ms=duration
        )

    async def _send_on(self, channel_type: str, claimed: Claimed) -> Outcome:
        channel = self.channels.get(channel_type)
        if channel is None:
            return Outcome(result="failed", error=f"no {channel_type} channel in this billing")
        try:
            async with asyncio.timeout(self.send_within):
                return await channel.send(claimed.job, self.clock())
        except TimeoutError:
            return Outcome(result="retry", error=f"no outcome within {self.send_within:g} s")
        except Exception as exc:  # an adapter bug must not lose the delivery
            log.exception("%s adapter failed on %s", channel_type, claimed.job.delivery_id)
            return Outcome(result="retry", error=f"{type(exc).__name__}: {exc}")

    async def _refresh_gauge(self) -> None:
        if time.monotonic() - self._gauge_at < _GAUGE_EVERY:
            return
        self._gauge_at = time.monotonic()
        metrics.OUTBOX_DUE.set(await deliveries.count_due(self.db, self.clock()))
