"""``pvgate_wecom_events_total{result}``: every WeCom callback, by what became of it."""

from __future__ import annotations

from typing import Final, Literal, get_args

from prometheus_client import Counter

Result = Literal[
    "relayed",  # accepted for relay: a delivery to the relay target is in the outbox
    "dropped_inactive",  # acknowledged to WeCom, not relayed: no active account covers it
    "duplicate",  # the same message again within the window: acknowledged, not relayed
    "bad_signature",  # not authenticated: signature, ciphertext or corp id wrong, or no such
    #                  enterprise or settings (one answer for all, so ids cannot be probed)
    "malformed",  # not a WeCom callback: no parameters, not XML, too large
    "rate_limited",  # refused before reading, over the rate limit
    "failed",  # authenticated, but could not be stored in time (WeCom retries it)
]
RESULTS: Final[tuple[str, ...]] = get_args(Result)

EVENTS = Counter(
    "pvgate_wecom_events_total", "WeCom event callbacks received, by result.", ["result"]
)
for _result in RESULTS:  # every series exists from the start, at 0
    EVENTS.labels(result=_result)


def count(result: Result) -> None:
    EVENTS.labels(result=result).inc()
