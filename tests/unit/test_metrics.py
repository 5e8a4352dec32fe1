"""Counting locally (`Tally`, `Spread`) ends in the same exposition as counting directly.

`Spread.flush` writes through prometheus_client's own per-bucket values (``_buckets``,
``_sum``): the contract this module pins (prometheus-client>=0.20,<1).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from metering.metrics import Spread, Tally

BUCKETS = (0.001, 0.01, 0.1, 1.0)
SAMPLES = (0.0005, 0.001, 0.002, 0.05, 0.1, 0.5, 2.0, 7.0, 0.01)


def exposition(registry: CollectorRegistry) -> list[str]:
    lines = generate_latest(registry).decode().splitlines()
    return [line for line in lines if not line.startswith("#") and "_created" not in line]


def test_a_flushed_spread_reads_as_the_same_observations_made_directly():
    direct, batched = CollectorRegistry(), CollectorRegistry()
    plain = Histogram("t_seconds", "t", buckets=BUCKETS, registry=direct)
    spread = Spread(Histogram("t_seconds", "t", buckets=BUCKETS, registry=batched))
    for value in SAMPLES:
        plain.observe(value)
        spread.observe(value)
    assert exposition(batched) != exposition(direct)  # nothing until flushed
    spread.flush()
    assert exposition(batched) == exposition(direct)
    spread.flush()  # a second flush adds nothing
    assert exposition(batched) == exposition(direct)


def test_a_flushed_tally_adds_what_it_counted_once():
    registry = CollectorRegistry()
    tally = Tally(Counter("t_total", "t", registry=registry))
    for _ in range(5):
        tally.inc()
    tally.inc(3)
    assert registry.get_sample_value("t_total") == 0
    tally.flush()
    tally.flush()
    assert registry.get_sample_value("t_total") == 8
