"""When to try a deferred message again, and which replies mean "this account is being throttled".

Pure policy, no I/O, so the schedule is testable and documented in one place (docs/delivery.md,
"Retry schedule").

* **Per message**: exponential backoff from ``first_delay`` doubling up to ``max_delay``, the
  defaults being Postfix's ``minimal_backoff_time`` (300 s) and ``maximal_backoff_time``
  (4000 s). The n-th retry waits a random time between half and all of its step ("equal
  jitter"): random enough that messages deferred together by one outage do not all come back in
  the same second, but never sooner than half a step, where full jitter (0..step) would now and
  then retry a dead upstream within a second of the failure.
* **Per account**: a ``421`` or a throttling reply pauses the whole account for
  ``throttle_delay`` doubling up to ``throttle_max_delay`` while the throttling goes on (the
  caller counts the consecutive throttles and resets on a delivery). Providers lift throttling
  within minutes, so the pause starts shorter than a message's backoff.
* **Busy**: nothing was attempted (no free pooled connection): retry after ``busy_delay``,
  without growing the backoff of a message that was never tried.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from mailgate.queue.model import Reply

# Texts of 4xx replies by which providers say "too much, slow down" (Office 365 "4.7.0 ...
# throttled", Gmail "4.7.28 ... rate limited", "too many connections"). Deliberately not every
# 4.7.x: 4.7.1 is also greylisting, which concerns one message, not the account.
THROTTLE_HINTS = re.compile(r"throttl|rate.?limit|too many (connections|messages|sessions)|server busy", re.I)


def is_throttling(reply: Reply) -> bool:
    """``421`` (the server is closing the session: it wants fewer of them) or a 4xx saying "slow down"."""
    return reply.code == 421 or (400 <= reply.code < 500 and THROTTLE_HINTS.search(reply.message) is not None)


@dataclass(frozen=True)
class RetryPolicy:
    first_delay: float = 300.0
    max_delay: float = 4000.0
    multiplier: float = 2.0
    throttle_delay: float = 60.0
    throttle_max_delay: float = 1800.0
    busy_delay: float = 5.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.first_delay <= self.max_delay or self.multiplier < 1:
            raise ValueError("need 0 < first_delay <= max_delay and multiplier >= 1")
        if not 0 < self.throttle_delay <= self.throttle_max_delay or self.busy_delay <= 0:
            raise ValueError("need 0 < throttle_delay <= throttle_max_delay and busy_delay > 0")

    def backoff(self, failures: int) -> float:
        """Seconds to wait after a message's ``failures``-th failed attempt (1 for the first)."""
        return self._jitter(self._step(self.first_delay, self.max_delay, failures))

    def throttle(self, consecutive: int) -> float:
        """Seconds to pause an account throttled ``consecutive`` times in a row (1 for the first)."""
        return self._jitter(self._step(self.throttle_delay, self.throttle_max_delay, consecutive))

    def busy(self) -> float:
        return self._jitter(self.busy_delay)

    def _step(self, first: float, cap: float, n: int) -> float:
        exponent = min(max(n, 1) - 1, 64)  # bounded: 2**64 steps exceed any cap, no float overflow
        return float(min(cap, first * self.multiplier**exponent))

    def _jitter(self, step: float) -> float:
        return self.rng.uniform(step / 2, step)
