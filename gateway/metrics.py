"""Prometheus metrics of the data plane (docs/architecture.md §7); no per-enterprise labels.

Those touched by every request are counted locally (`metering.metrics.Tally`, `Spread`)
and flushed every second and before each scrape.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

from metering.metrics import Spread, Tally

OUTCOMES: Final = (
    "served",
    "blocked_exhausted",
    "blocked_expired",
    "blocked_no_balance",
    "blocked_suspended",
    "not_counted",
    "unknown_site",
    "bad_request",
    "upstream_error",
    "fail_open",
    "fail_closed",
    "overloaded",
    "client_closed",
)
REQUESTS: Final = Counter("pvgate_requests_total", "Requests by what the gateway did.", ["outcome"])
PV_DEBITED: Final = Tally(Counter("pvgate_pv_debited_total", "Page views debited from a balance."))
PV_GIVEN_BACK: Final = Counter(
    "pvgate_pv_given_back_total", "Page views given back after the origin failed to deliver."
)
PV_UNBILLED: Final = Counter(
    "pvgate_pv_unbilled_total",
    "Page views served while Redis was failing that could not be billed, by reason.",
    ["reason"],
)
PV_OUTCOME_UNKNOWN: Final = Counter(
    "pvgate_pv_debit_outcome_unknown_total",
    "Page-view debits that failed in a way that leaves open whether Redis took the PV "
    "(a timeout): reconciliation books what Redis counted.",
)
PV_REPLAYED: Final = Counter(
    "pvgate_pv_replayed_total", "Page views served in fail-open mode and debited afterwards."
)
REQUEST_DURATION: Final = Spread(
    Histogram(
        "pvgate_request_duration_seconds",
        "Time from a request's head to the end of its response, as the gateway saw it.",
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    )
)
UPSTREAM_DURATION: Final = Spread(
    Histogram(
        "pvgate_upstream_duration_seconds",
        "Time the origin took to answer with its response headers.",
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    )
)
BREAKER_OPEN: Final = Gauge(
    "pvgate_redis_breaker_open",
    "1 while the Redis circuit breaker is open in a worker.",
    multiprocess_mode="max",
)

# Children for the hot path, looked up once and counted locally.
OUTCOME: Final = {name: Tally(REQUESTS.labels(name)) for name in OUTCOMES}
TIMEOUTS: Final = Counter(
    "pvgate_client_timeouts_total",
    "Visitor connections closed by a timeout: idle (keep-alive), header, body, send.",
    ["kind"],
)
ADMISSION_INFLIGHT: Final = Gauge(
    "pvgate_admission_inflight",
    "Requests a worker is handling (admission control's slots in use).",
    multiprocess_mode="livesum",
)
ADMISSION_QUEUED: Final = Gauge(
    "pvgate_admission_queued",
    "Requests waiting for an admission slot.",
    multiprocess_mode="livesum",
)
ADMISSION_REFUSED: Final = Counter(
    "pvgate_admission_refused_total",
    "Requests refused by admission control with a 503, by reason (queue_full, queue_timeout).",
    ["reason"],
)
