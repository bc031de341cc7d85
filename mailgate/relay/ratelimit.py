"""A token bucket per account: ``rateLimit.messagesPerMinute`` as this gateway's share.

Why the bucket is small: a bucket of capacity C refilled at R per minute lets
C + R messages through in any 60-second window. Providers count per minute
(Office 365: 30), so C is a tenth of R (at least 1): bursts are absorbed, and
no window ever sees more than 1.1x the configured rate.

The bucket is reconfigured in place when the operator pushes a new rate, so
tokens already earned survive a change (clamped to the new capacity) and a
reload never resets the limit to a full burst.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

_EPSILON = 1e-9


class TokenBucket:
    """``take()`` answers 0 (granted) or the seconds until a token will be available."""

    def __init__(self, per_minute: int | None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.per_minute: int | None = None
        self.capacity = 0.0
        self._tokens = 0.0
        self._updated = clock()
        self.configure(per_minute)

    def configure(self, per_minute: int | None) -> None:
        """Change the rate live; ``None`` means unlimited."""
        self._refill()
        first = self.per_minute is None
        self.per_minute = per_minute
        if per_minute is None:
            return
        self.capacity = max(1.0, math.floor(per_minute / 10))
        self._tokens = self.capacity if first else min(self._tokens, self.capacity)

    def _refill(self) -> None:
        now = self._clock()
        if self.per_minute is not None:
            self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.per_minute / 60.0)
        self._updated = now

    def take(self) -> float:
        """Take one token; return 0.0 when granted, else how long until one is available (nothing taken)."""
        if self.per_minute is None:
            return 0.0
        self._refill()
        if self._tokens >= 1.0 - _EPSILON:  # waiting exactly the advertised time must succeed
            self._tokens = max(self._tokens - 1.0, 0.0)
            return 0.0
        if self.per_minute == 0:
            return math.inf
        return (1.0 - self._tokens) * 60.0 / self.per_minute

    def give_back(self) -> None:
        """Return a token taken for a message that was never sent (refused before reaching the upstream)."""
        if self.per_minute is not None:
            self._tokens = min(self.capacity, self._tokens + 1.0)
