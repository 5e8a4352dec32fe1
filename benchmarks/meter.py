"""Debit throughput of the metering hot path: one script call per debit against the `Meter`.

Run from the repository root::

    python -m benchmarks.meter [--quick] [--json]

The benchmark starts a private ``redis-server`` (127.0.0.1, a free port, no persistence,
in a temporary directory) and stops it at the end.  Three scenarios run one after the
other, each with 256 caller coroutines that take one PV at a time in a loop, as the
gateway's request handlers do:

``baseline``
    every debit is its own ``debit_pv`` EVALSHA (`metering.scripts.call`) for one
    enterprise, with a connection per caller, so nothing batches or queues client-side;
``hot``
    the callers share one `Meter` and all debit one enterprise, so the debits of a loop
    turn collapse into one script call for n PV;
``spread``
    the callers share one `Meter`, each debit for one of 10,000 enterprises picked
    uniformly at random, so batching rarely applies and the gain is the pipelining;
``hot_wait1``, ``spread_wait1``
    ``hot`` and ``spread`` with ``wait_replicas = 1``: the server has a replica (on the
    same machine), and every round ends with ``WAIT 1``.  Their ratios to ``hot`` and
    ``spread`` are the cost of that durability (reported, no target).

Each scenario warms up first (connections opened, script cached), then counts the debits
granted in a fixed window (quick: 4 s, full: 15 s).  Callers stop starting debits at the
end of the window and the clock runs until the last one came back, so rate = granted /
elapsed.  Every enterprise is credited one package far larger than the run can use, so
nothing may be refused.  Afterwards the ``used`` of every enterprise's buckets is read back
with `BalanceStore.snapshot`; a scenario is valid only if it equals the debits granted
(warm-up included) and no debit was refused or raised.  The ratios to ``baseline`` are null
when a scenario involved is invalid.

Targets: hot >= 5 x baseline, spread >= 1.5 x baseline.  With ``--json`` the last line of
stdout is one JSON object.  Exit status 0 when every scenario is valid, targets met or not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from redis.asyncio import Redis

from benchmarks.common import event_loop
from metering import scripts
from metering.buckets import BucketKind, BucketSpec
from metering.keys import enterprise_keys
from metering.meter import Meter
from metering.replies import parse_debit
from metering.store import BalanceStore
from pvgate.embedded import RedisServer

CALLERS = 256
SPREAD_ENTERPRISES = 10_000
# Credits and read-backs in flight at once: keeps Redis busy without a connection per id.
SETUP_WIDTH = 128
BUCKET_ID = "bench-pkg"
BUCKET_PV = 10**12
HOT_TARGET = 5.0
SPREAD_TARGET = 1.5
# A stuck debit must fail the scenario rather than hang the run.
STRAGGLER_GRACE = 10.0
SEED = 20240601

T = TypeVar("T")
R = TypeVar("R")
DebitOnce = Callable[[], Awaitable[bool]]
# Makes a scenario's one-PV debit for a client and its enterprises (and the Meter to close).
Builder = Callable[[Redis, Sequence[str]], tuple[DebitOnce, Meter | None]]


@dataclass(frozen=True, slots=True)
class Config:
    quick: bool
    seconds: float
    warmup: float


@dataclass(slots=True)
class Tally:
    granted: int = 0
    refused: int = 0
    errors: int = 0
    first_error: str = ""

    def fail(self, error: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or error


@dataclass(frozen=True, slots=True)
class Outcome:
    name: str
    granted: int
    seconds: float
    warmup_granted: int
    used: int
    refused: int
    errors: int
    error: str = ""

    @property
    def rate(self) -> float:
        return self.granted / self.seconds if self.seconds > 0 else 0.0

    @property
    def valid(self) -> bool:
        return not self.problems()

    def problems(self) -> list[str]:
        """Why the scenario's count cannot be trusted; empty when it adds up."""
        found = [self.error] if self.error else []
        if self.errors:
            found.append(f"{self.errors} debits raised")
        if self.refused:
            found.append(f"{self.refused} debits refused")
        if self.used != self.granted + self.warmup_granted:
            found.append(f"used {self.used} != granted {self.granted + self.warmup_granted}")
        if self.granted <= 0:
            found.append("no debit granted")
        return found

    def details(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "debits_per_s": self.rate,
            "problems": self.problems(),
            "valid": self.valid,
        }


async def for_each(items: Sequence[T], work: Callable[[T], Awaitable[R]]) -> list[R]:
    """``work`` on every item, at most SETUP_WIDTH at a time; results in item order."""
    results: dict[int, R] = {}
    indexes = iter(range(len(items)))

    async def worker() -> None:
        for i in indexes:  # shared: each index goes to exactly one worker
            results[i] = await work(items[i])

    await asyncio.gather(*(worker() for _ in range(min(SETUP_WIDTH, len(items)))))
    return [results[i] for i in range(len(items))]


async def credit_all(store: BalanceStore, enterprises: Sequence[str]) -> None:
    now = int(time.time() * 1000)
    spec = BucketSpec(
        id=BUCKET_ID,
        kind=BucketKind.PACKAGE,
        granted=BUCKET_PV,
        expires_at=now + 30 * 86_400_000,
        ordered_at=now,
    )
    created = await for_each(enterprises, lambda eid: store.credit(eid, spec))
    if not all(created):
        raise RuntimeError("a benchmark enterprise had been credited before")


async def used_total(store: BalanceStore, enterprises: Sequence[str]) -> int:
    snapshots = await for_each(enterprises, store.snapshot)
    return sum(bucket.used for snap in snapshots for bucket in snap.buckets)


async def caller(debit: DebitOnce, until: float, tally: Tally) -> None:
    while time.perf_counter() < until:
        try:
            granted = await debit()
        except Exception as exc:  # the scenario turns invalid; say why
            tally.fail(f"{type(exc).__name__}: {exc}")
            return
        if granted:
            tally.granted += 1
        else:
            tally.refused += 1


async def run_phase(debit: DebitOnce, seconds: float) -> tuple[Tally, float]:
    """CALLERS callers debit for ``seconds``; the tally and the time until the last is back."""
    tally = Tally()
    started = time.perf_counter()
    try:
        async with asyncio.timeout(seconds + STRAGGLER_GRACE):
            await asyncio.gather(*(caller(debit, started + seconds, tally) for _ in range(CALLERS)))
    except TimeoutError:
        tally.fail(f"debits still pending {STRAGGLER_GRACE} s after the window closed")
    return tally, time.perf_counter() - started


def baseline_debit(client: Redis, enterprises: Sequence[str]) -> tuple[DebitOnce, Meter | None]:
    keys = enterprise_keys(enterprises[0])

    async def debit() -> bool:
        reply = await scripts.call(client, scripts.DEBIT_PV, keys, (1,))
        return parse_debit(reply).granted == 1

    return debit, None


def hot_debit(client: Redis, enterprises: Sequence[str]) -> tuple[DebitOnce, Meter | None]:
    meter, enterprise = Meter(client), enterprises[0]

    async def debit() -> bool:
        return (await meter.debit(enterprise)).granted

    return debit, meter


def spread_debit(
    client: Redis, enterprises: Sequence[str], wait_replicas: int = 0
) -> tuple[DebitOnce, Meter | None]:
    meter, pick = Meter(client, wait_replicas=wait_replicas), random.Random(SEED).choice

    async def debit() -> bool:
        return (await meter.debit(pick(enterprises))).granted

    return debit, meter


def hot_wait_debit(client: Redis, enterprises: Sequence[str]) -> tuple[DebitOnce, Meter | None]:
    meter, enterprise = Meter(client, wait_replicas=1), enterprises[0]

    async def debit() -> bool:
        return (await meter.debit(enterprise)).granted

    return debit, meter


def spread_wait_debit(client: Redis, enterprises: Sequence[str]) -> tuple[DebitOnce, Meter | None]:
    return spread_debit(client, enterprises, wait_replicas=1)


SCENARIOS: tuple[tuple[str, list[str], Builder], ...] = (
    ("baseline", ["bench-base-0"], baseline_debit),
    ("hot", ["bench-hot-0"], hot_debit),
    ("spread", [f"bench-spr-{i}" for i in range(SPREAD_ENTERPRISES)], spread_debit),
    ("hot_wait1", ["bench-hotw-0"], hot_wait_debit),
    ("spread_wait1", [f"bench-sprw-{i}" for i in range(SPREAD_ENTERPRISES)], spread_wait_debit),
)


async def run_scenario(
    port: int, config: Config, name: str, enterprises: Sequence[str], build: Builder
) -> Outcome:
    # A pool as large as the callers (plus setup workers), so baseline never queues on it.
    client = Redis(
        host="127.0.0.1",
        port=port,
        decode_responses=True,
        max_connections=CALLERS + SETUP_WIDTH,
    )
    try:
        store = BalanceStore(client, timeout=10.0)
        await credit_all(store, enterprises)
        debit, meter = build(client, enterprises)
        warm, _ = await run_phase(debit, config.warmup)
        measured, seconds = await run_phase(debit, config.seconds)
        if meter is not None:
            await meter.aclose()
        used = await used_total(store, enterprises)
    finally:
        await client.aclose()
    return Outcome(
        name,
        measured.granted,
        seconds,
        warm.granted,
        used,
        warm.refused + measured.refused,
        warm.errors + measured.errors,
        warm.first_error or measured.first_error,
    )


async def run_all(port: int, config: Config, say: Callable[[str], None]) -> list[Outcome]:
    outcomes = []
    for name, enterprises, build in SCENARIOS:
        try:
            outcome = await run_scenario(port, config, name, enterprises, build)
        except Exception as exc:  # setup or read-back failed: report it, run the rest
            traceback.print_exc()
            outcome = Outcome(name, 0, 0.0, 0, 0, 0, 0, f"{type(exc).__name__}: {exc}")
        say(line(outcome))
        outcomes.append(outcome)
    return outcomes


def line(o: Outcome) -> str:
    total = o.granted + o.warmup_granted
    verdict = "valid" if o.valid else f"INVALID: {'; '.join(o.problems())}"
    return (
        f"{o.name:<13}{o.rate:>12,.0f} debits/s   granted {o.granted:,} in {o.seconds:.2f} s"
        f"   used {o.used:,} vs granted {total:,} (warm-up incl.)"
        f"   refused {o.refused} errors {o.errors}   {verdict}"
    )


def ratio(scenario: Outcome, baseline: Outcome) -> float | None:
    if not (scenario.valid and baseline.valid) or baseline.rate <= 0:
        return None
    return scenario.rate / baseline.rate


def summary(outcomes: Sequence[Outcome], config: Config, loop: str) -> dict[str, Any]:
    by_name = {o.name: o for o in outcomes}
    base = by_name["baseline"]
    ratios = {
        "hot_ratio": (ratio(by_name["hot"], base), HOT_TARGET),
        "spread_ratio": (ratio(by_name["spread"], base), SPREAD_TARGET),
    }
    result: dict[str, Any] = {o.name: o.rate for o in outcomes}
    result.update({key: value for key, (value, _) in ratios.items()})
    result["targets"] = {key: target for key, (_, target) in ratios.items()}
    result["targets_met"] = {
        key: value is not None and value >= target for key, (value, target) in ratios.items()
    }
    # The cost of wait_replicas = 1: the rate with WAIT over the rate without.
    result["wait1_hot_ratio"] = ratio(by_name["hot_wait1"], by_name["hot"])
    result["wait1_spread_ratio"] = ratio(by_name["spread_wait1"], by_name["spread"])
    result.update(
        valid=all(o.valid for o in outcomes),
        quick=config.quick,
        callers=CALLERS,
        seconds_per_scenario=config.seconds,
        warmup_seconds=config.warmup,
        event_loop=loop,
        spread_enterprises=SPREAD_ENTERPRISES,
        scenarios={o.name: o.details() for o in outcomes},
    )
    return result


def print_ratios(result: dict[str, Any]) -> None:
    for key, target in result["targets"].items():
        value = result[key]
        shown = "invalid" if value is None else f"{value:.2f}"
        met = "met" if result["targets_met"][key] else "NOT met"
        print(f"{key:<13}= {shown:>7}   target >= {target:g}   {met}")
    for key in ("wait1_hot_ratio", "wait1_spread_ratio"):
        value = result[key]
        shown = "invalid" if value is None else f"{value:.2f}"
        print(f"{key:<19}= {shown:>7}   (wait_replicas = 1 over none; no target)")
    print("all scenarios valid" if result["valid"] else "INVALID run: see the scenarios above")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.meter",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="4 s per scenario instead of 15")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args(argv)
    config = Config(args.quick, 4.0 if args.quick else 15.0, 1.0 if args.quick else 3.0)
    factory, loop = event_loop()
    print(
        f"meter benchmark: {CALLERS} callers, {config.warmup:g} s warm-up + "
        f"{config.seconds:g} s per scenario, {loop}",
        flush=True,
    )
    with (
        RedisServer() as server,
        RedisServer(replica_of=server),  # for the wait scenarios' WAIT 1
        asyncio.Runner(loop_factory=factory) as runner,
    ):
        port = server.port
        outcomes = runner.run(run_all(port, config, lambda text: print(text, flush=True)))
    result = summary(outcomes, config, loop)
    print_ratios(result)
    if args.json:
        print(json.dumps(result))
    return 0 if result["valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
