"""Token buckets for the public WeCom callback: per enterprise id named, and over all.

The keys come from the internet (any path names an enterprise id), so the table is bounded:
when it is full, buckets that have refilled — which are as good as absent — are dropped,
and if none has, the key is refused rather than the table grown.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


@dataclass(slots=True)
class TokenBuckets:
    """``rate`` tokens per second per key, at most ``burst`` saved up."""

    rate: float
    burst: int
    max_keys: int = 10_000
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def take(self, key: str, now: float) -> bool:
        """Take one token for ``key`` at monotonic time ``now``; False when there is none."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys and not self._prune(now):
                return False
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True

    def _prune(self, now: float) -> bool:
        full = [
            key
            for key, b in self._buckets.items()
            if b.tokens + (now - b.at) * self.rate >= self.burst
        ]
        for key in full:
            del self._buckets[key]
        return bool(full)

    def __len__(self) -> int:
        return len(self._buckets)
