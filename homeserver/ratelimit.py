"""Token-bucket rate limiting, configured by Synapse's `rc_*` options.

Each key (an IP address, a user ID) has a bucket holding up to `burst_count`
actions that refills at `per_second`. An action on an empty bucket is
refused with M_LIMIT_EXCEEDED and how long to wait. Buckets are per process,
as in Synapse.
"""

from __future__ import annotations

import math
import time

from .config import RateLimit
from .errors import limit_exceeded

_PRUNE_EVERY = 10_000


class RateLimiter:
    def __init__(self, limit: RateLimit) -> None:
        self.rate = limit.per_second
        self.burst = limit.burst_count
        # key -> (tokens left, time of last update)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._ops = 0

    def _level(self, key: str, now: float) -> float:
        tokens, last = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.rate)

    def check(self, key: str, *, update: bool = True) -> None:
        """Take one action for `key`, or raise M_LIMIT_EXCEEDED (429)."""
        now = time.monotonic()
        tokens = self._level(key, now)
        if tokens < 1:
            retry_after = (1 - tokens) / self.rate
            raise limit_exceeded(math.ceil(retry_after * 1000))
        if update:
            self._buckets[key] = (tokens - 1, now)
            self._ops += 1
            if self._ops % _PRUNE_EVERY == 0:
                self._prune(now)

    def record(self, key: str) -> None:
        """Take one action for `key` even if that empties the bucket (for failures)."""
        now = time.monotonic()
        self._buckets[key] = (max(self._level(key, now) - 1, 0.0), now)

    def _prune(self, now: float) -> None:
        """Forget keys whose buckets have refilled completely."""
        full = [k for k in self._buckets if self._level(k, now) >= self.burst]
        for key in full:
            del self._buckets[key]
