"""Queued-message counts in SmtpAccount status: read from every gateway, shown at most once per interval.

Under load the counts change on every gateway status read, and a status PATCH
per account per read would flood the apiserver (10,000 accounts, three
gateways, a read every 30 s: 1,000 writes a second). So the counts the status
shows are *published* here, per account, and the status is built from the
published counts only (``Engine.status_inputs``):

- a gateway read whose counts for an account differ from its previous read
  asks for a publication of that account (``changed``);
- the account is published at once if its shown counts last changed at least
  ``interval`` ago, else once that interval is over (``run`` waits for it),
  with the counts current at that moment;
- publishing changes nothing, and marks nothing for the status writer, when
  the counts equal what is shown.

So the ``delivery`` block of an account changes at most once per interval
(two resync periods: 60 s by default), a status write for another reason
(a condition) carries the same published counts and adds no change, and an
account whose counts stay the same is never written for them. An account
that never had a message pending never gets the block: zeros are published
only to replace non-zero counts, so a drained queue shows zeros rather than
stale numbers.

Gateways are combined with ``max``, never summed: with a shared PostgreSQL
queue every gateway counts the same messages (a SQLite queue has one gateway).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from ..adminstatus import QueueStatus
from ..spec import DeliveryStatus


@dataclass(frozen=True)
class QueueCounts:
    """One gateway's pending messages of one account."""

    queued: int
    deferred: int
    sending: int
    oldest: datetime | None
    """When the oldest was accepted, to the second (the status shows no finer time)."""

    @classmethod
    def from_wire(cls, queue: QueueStatus) -> QueueCounts:
        oldest = queue.oldest_created_at.replace(microsecond=0) if queue.oldest_created_at is not None else None
        if (queue.queued, queue.deferred, queue.sending, oldest) == (0, 0, 0, None):
            return NOTHING_PENDING
        return cls(queue.queued, queue.deferred, queue.sending, oldest)

    @classmethod
    def from_status(cls, status: DeliveryStatus) -> QueueCounts:
        return cls(status.queued, status.deferred, status.sending, status.oldest_message_time)

    def as_status(self) -> DeliveryStatus:
        return DeliveryStatus(queued=self.queued, deferred=self.deferred, sending=self.sending, oldest_message_time=self.oldest)


NOTHING_PENDING = QueueCounts(0, 0, 0, None)
"""Most accounts, most of the time: one shared instance."""


def combine(reports: Sequence[QueueCounts | None]) -> QueueCounts | None:
    """The gateways' reports as one: the largest of each count and the earliest oldest message.

    A ``None`` report is a gateway without a queue; None when no gateway has one.
    """
    counts = [report for report in reports if report is not None]
    if not counts:
        return None
    times = [report.oldest for report in counts if report.oldest is not None]
    return QueueCounts(
        queued=max(report.queued for report in counts),
        deferred=max(report.deferred for report in counts),
        sending=max(report.sending for report in counts),
        oldest=min(times) if times else None,
    )


class QueueStatusPublisher:
    """Decides, per account, which counts the status shows, and when they may change.

    ``reports(key)``: what each gateway serving the account reports (``None``: it runs no
    queue); empty while no gateway serving it has answered, which keeps what is shown.
    ``mark(keys)``: the status writer's, called with accounts whose shown counts changed.
    """

    def __init__(
        self,
        interval: float,
        reports: Callable[[str], Sequence[QueueCounts | None]],
        mark: Callable[[Iterable[str]], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self._reports = reports
        self._mark = mark
        self._clock = clock
        self._shown: dict[str, QueueCounts] = {}
        self._changed_at: dict[str, float] = {}  # when the shown counts last changed (clock time)
        self._due: list[tuple[float, str]] = []  # (when, account): publications waiting for their interval
        self._scheduled: set[str] = set()
        self._wakeup = asyncio.Event()

    def shown(self, key: str) -> DeliveryStatus | None:
        """What the account's status shows; None: no ``delivery`` block."""
        counts = self._shown.get(key)
        return counts.as_status() if counts is not None else None

    def seed(self, key: str, status: DeliveryStatus | None) -> None:
        """What the object's status already shows (an operator restart): kept until the gateways say otherwise."""
        if status is not None:
            self._shown[key] = QueueCounts.from_status(status)

    def forget(self, key: str) -> None:
        self._shown.pop(key, None)
        self._changed_at.pop(key, None)
        self._scheduled.discard(key)

    def changed(self, keys: Iterable[str]) -> None:
        """A gateway reported different counts for ``keys``: publish each now, or once its interval is over."""
        now = self._clock()
        published = []
        for key in keys:
            if key in self._scheduled:
                continue  # already waiting: it will take the counts current then
            due = self._changed_at.get(key, -math.inf) + self.interval
            if due <= now:
                if self._publish(key, now):
                    published.append(key)
            else:
                self._scheduled.add(key)
                heapq.heappush(self._due, (due, key))
                self._wakeup.set()
        if published:
            self._mark(published)

    def publish_due(self) -> None:
        """Publish the accounts whose interval is over."""
        now = self._clock()
        published = []
        while self._due and self._due[0][0] <= now:
            _, key = heapq.heappop(self._due)
            if key in self._scheduled:
                self._scheduled.discard(key)
                if self._publish(key, now):
                    published.append(key)
        if published:
            self._mark(published)

    async def run(self) -> None:
        """Publish waiting accounts when their interval is over (the operator's background task)."""
        while True:
            self._wakeup.clear()
            wait = self._due[0][0] - self._clock() if self._due else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wakeup.wait()
            self.publish_due()

    def _publish(self, key: str, now: float) -> bool:
        """Show the account's current counts; True if that changed what is shown."""
        reports = self._reports(key)
        if not reports:
            return False  # no gateway serving it has answered yet: unknown, not empty
        counts = combine(reports)
        shown = self._shown.get(key)
        if counts == NOTHING_PENDING and shown is None:
            counts = None  # never had a message pending: no block at all
        if counts == shown:
            return False
        if counts is None:
            del self._shown[key]
        else:
            self._shown[key] = counts
        self._changed_at[key] = now
        return True
