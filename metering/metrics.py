"""Prometheus metrics of the metering core (DESIGN §7)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

METER_BATCH_SIZE = Histogram(
    "pvgate_meter_batch_size",
    "Page-view debits of one enterprise coalesced into one script call.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
METER_DURATION = Histogram(
    "pvgate_meter_duration_seconds",
    "Round trip of one pipelined batch of debits to Redis.",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
)
REDIS_ERRORS = Counter(
    "pvgate_redis_errors_total",
    "Redis failures seen by metering, by kind (timeout, connection, script, noscript).",
    ["kind"],
)

# "livemax": across gateway worker processes the worst lag counts, and a dead worker's last
# value must not stick.
USAGE_FLUSH_LAG = Gauge(
    "pvgate_usage_flush_lag_seconds",
    "Age of the oldest usage row not yet written to the usage stream (0 when all written).",
    multiprocess_mode="livemax",
)
USAGE_ENTRIES = Counter(
    "pvgate_usage_entries_total",
    "Usage stream entries written (XADD acknowledged by Redis).",
)
USAGE_DROPPED = Counter(
    "pvgate_usage_dropped_total",
    "PV in usage rows dropped unsent because the pending buffer was full (sum of |n|).",
)
LOOP_LAG = Histogram(
    "pvgate_event_loop_lag_seconds",
    "How late the event loop ran a 5 ms tick: time the process was too busy to run callbacks.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
