"""Prometheus metrics of the metering core, and counting them cheaply on the hot path.

A page view touches several metrics; with prometheus_client in multiprocess mode each
``inc`` or ``observe`` is a locked write to a memory-mapped file (a microsecond or two),
which adds up to a tenth of a worker's time at full load.  `Tally` (a counter) and
`Spread` (a histogram) count in plain Python integers instead, and `flush` adds what they
counted to the real metrics: the gateway worker flushes every second and whenever the
supervisor is about to answer a scrape, so ``/metrics`` always shows every request
answered before it was asked (docs/architecture.md §7).
"""

from __future__ import annotations

from typing import Any, Final

from prometheus_client import Counter, Gauge, Histogram

_BATCHED: Final[list[Tally | Spread]] = []


class Tally:
    """A counter (or one labelled child of it) counted locally until `flush`."""

    __slots__ = ("_metric", "n")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self.n = 0
        _BATCHED.append(self)

    def inc(self, n: int = 1) -> None:
        self.n += n

    def flush(self) -> None:
        if self.n:
            n, self.n = self.n, 0
            self._metric.inc(n)


class Spread:
    """A histogram (without labels) observed locally until `flush`.

    Flushing adds the counts per bucket and the sum through the histogram's own values —
    prometheus_client keeps them as ``_buckets`` (not cumulative) and ``_sum``; the
    contract is tested in tests/unit/test_metrics.py against plain ``observe`` calls.
    """

    __slots__ = ("_bounds", "_counts", "_metric", "_sum")

    def __init__(self, metric: Histogram) -> None:
        self._metric = metric
        self._bounds: list[float] = list(metric._upper_bounds)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        _BATCHED.append(self)

    def observe(self, amount: float) -> None:
        self._sum += amount
        # A scan, not bisect: a dozen compiled comparisons cost less than one call out.
        index = 0
        for bound in self._bounds:
            if amount <= bound:
                break
            index += 1
        self._counts[index] += 1

    def flush(self) -> None:
        counts = self._counts
        if not any(counts):
            return
        self._counts = [0] * len(counts)
        total, self._sum = self._sum, 0.0
        metric: Any = self._metric
        metric._sum.inc(total)
        for bucket, n in zip(metric._buckets, counts, strict=True):
            if n:
                bucket.inc(n)


def flush() -> None:
    """Add everything counted locally to the Prometheus metrics."""
    for batched in _BATCHED:
        batched.flush()


METER_BATCH_SIZE: Final = Spread(
    Histogram(
        "pvgate_meter_batch_size",
        "Page-view debits of one enterprise coalesced into one script call.",
        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
    )
)
METER_DURATION: Final = Spread(
    Histogram(
        "pvgate_meter_duration_seconds",
        "Round trip of one pipelined batch of debits to Redis.",
        buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
    )
)
REDIS_ERRORS: Final = Counter(
    "pvgate_redis_errors_total",
    "Redis failures seen by metering, by kind (timeout, connection, script, noscript).",
    ["kind"],
)

# "livemax": across gateway worker processes the worst lag counts, and a dead worker's last
# value must not stick.
USAGE_FLUSH_LAG: Final = Gauge(
    "pvgate_usage_flush_lag_seconds",
    "Age of the oldest usage row not yet written to the usage stream (0 when all written).",
    multiprocess_mode="livemax",
)
USAGE_ENTRIES: Final = Counter(
    "pvgate_usage_entries_total",
    "Usage stream entries written (XADD acknowledged by Redis).",
)
USAGE_DROPPED: Final = Counter(
    "pvgate_usage_dropped_total",
    "PV in usage rows dropped unsent because the pending buffer was full (sum of |n|).",
)
LOOP_LAG: Final = Spread(
    Histogram(
        "pvgate_event_loop_lag_seconds",
        "How late the event loop ran a 5 ms tick: time it was too busy to run callbacks.",
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
    )
)
