"""Slows down guessing of the admin token: a client that presents a wrong token too often is refused for a while.

A moving window per client address (the `limits` library): after `attempts` failures within `window_seconds`,
that client's further attempts are answered 429 with Retry-After until the oldest failure leaves the window.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter


class LoginThrottle:
    def __init__(self, attempts: int = 10, window_seconds: int = 60) -> None:
        self._item = RateLimitItemPerSecond(attempts, window_seconds)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def retry_after(self, client: str) -> int | None:
        """Seconds until `client` may try again, or None if it may try now."""
        if self._limiter.test(self._item, client):
            return None
        reset = self._limiter.get_window_stats(self._item, client).reset_time
        return max(1, math.ceil(reset - time.time()))

    def failed(self, client: str) -> None:
        self._limiter.hit(self._item, client)
