"""Admin API revisions: wall-clock based, so they keep moving forward across operator restarts."""

from __future__ import annotations

import time
from collections.abc import Callable


class Revisions:
    """Hands out strictly increasing revisions, at least the current time in microseconds.

    Why the clock: a gateway refuses a revision older than its own (409), and a
    restarted operator has no memory of the last one it used. Microseconds since
    the epoch are far above any counter a previous run could have reached, and
    ``at_least`` lets a 409 (a gateway ahead of a skewed clock) move past it.
    """

    def __init__(self, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._clock_ns = clock_ns
        self._last = 0

    def next(self, at_least: int = 0) -> int:
        value = max(self._last + 1, self._clock_ns() // 1000, at_least)
        self._last = value
        return value
