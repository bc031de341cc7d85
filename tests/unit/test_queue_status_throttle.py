"""The throttle between gateways' queued-message counts and SmtpAccount status (mailgate/operator/queuestatus.py).

A fake clock drives ``QueueStatusPublisher`` the way the operator does: ``changed`` after each gateway status
read whose counts differ, ``publish_due`` when a waiting account's interval is over. Every mark is a status
write the counts cause; the tests count them.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from mailgate.operator.conditions import StatusInputs, build_status, status_body, status_patch
from mailgate.operator.queuestatus import NOTHING_PENDING, QueueCounts, QueueStatusPublisher, combine
from mailgate.spec import DeliveryStatus

INTERVAL = 60.0
OLDEST = datetime(2025, 3, 1, 10, 0, 5, tzinfo=UTC)


class Fixture:
    """A publisher, what each gateway reports per account, and the marks (status writes) it made."""

    def __init__(self, interval: float = INTERVAL) -> None:
        self.now = 0.0
        self.reports: dict[str, list[QueueCounts | None]] = {}
        self.marks: list[tuple[float, str]] = []
        self.publisher = QueueStatusPublisher(interval, self._reports, self._mark, clock=lambda: self.now)

    def _reports(self, key: str) -> Sequence[QueueCounts | None]:
        return self.reports.get(key, [])

    def _mark(self, keys: Iterable[str]) -> None:
        self.marks.extend((self.now, key) for key in keys)

    def read(self, key: str, *reports: QueueCounts | None, at: float) -> None:
        """Gateways were read at ``at`` and reported ``reports`` for ``key``, which differ from their last read."""
        self.now = at
        self.reports[key] = list(reports)
        self.publisher.publish_due()
        self.publisher.changed([key])

    def shown(self, key: str) -> DeliveryStatus | None:
        return self.publisher.shown(key)


def counts(queued: int = 0, deferred: int = 0, sending: int = 0) -> QueueCounts:
    return QueueCounts(queued, deferred, sending, OLDEST)


def test_counts_changing_at_every_read_are_shown_at_most_once_per_interval() -> None:
    f = Fixture()
    for second in range(0, 600, 2):  # ten minutes of load, three gateways read every two seconds
        f.read("shop/busy", counts(second % 7, second, 1), counts(second % 5, second, 2), None, at=float(second))
    times = [at for at, key in f.marks if key == "shop/busy"]
    assert len(times) >= 9, "the counts must still be shown, at the interval"
    assert all(later - earlier >= INTERVAL for earlier, later in itertools.pairwise(times)), times
    assert len(times) <= 600 / INTERVAL + 1
    shown = f.shown("shop/busy")
    assert shown is not None and shown.deferred == times[-1]  # the counts current when it was last published
    assert shown.sending == 2 and shown.oldest_message_time == OLDEST  # the largest report, not the sum


def test_a_status_is_written_for_the_counts_only_when_the_shown_counts_change() -> None:
    """What the status writer does with the marks: one patch per change of the body, and none for the rest."""
    f = Fixture()
    written: list[dict] = []
    previous = None
    for second in range(0, 300, 3):
        f.read("shop/busy", counts(deferred=1 + (second // 100)), at=float(second))  # 1, then 2 at 100 s, 3 at 200 s
        status = build_status(StatusInputs(generation=1, delivery=f.shown("shop/busy")), [], OLDEST)
        if previous is None or status_body(status) != status_body(previous):
            written.append(status_patch(status, previous))
            previous = status
    assert [patch["delivery"]["deferred"] for patch in written] == [1, 2, 3]


def test_unchanged_counts_are_not_published_again() -> None:
    f = Fixture()
    for second in range(0, 600, 5):  # another gateway's reports change; this account's counts do not
        f.read("shop/stuck", counts(deferred=4), counts(deferred=4), at=float(second))
    assert f.marks == [(0.0, "shop/stuck")]


def test_an_account_that_never_queues_never_gets_the_block() -> None:
    f = Fixture()
    for second in range(0, 300, 10):
        f.read("shop/quiet", NOTHING_PENDING, NOTHING_PENDING, at=float(second))
    assert f.marks == [] and f.shown("shop/quiet") is None


def test_a_drained_queue_shows_zeros_once_its_interval_is_over() -> None:
    f = Fixture()
    f.read("shop/billing", counts(deferred=1), at=0.0)
    f.read("shop/billing", NOTHING_PENDING, at=5.0)  # delivered: waits for the interval
    assert f.shown("shop/billing") == DeliveryStatus(deferred=1, oldest_message_time=OLDEST)
    f.now = INTERVAL - 1
    f.publisher.publish_due()
    assert len(f.marks) == 1
    f.now = INTERVAL
    f.publisher.publish_due()
    assert f.marks == [(0.0, "shop/billing"), (INTERVAL, "shop/billing")]
    assert f.shown("shop/billing") == DeliveryStatus()  # zeros, no oldest: not stale numbers, not gone
    before = build_status(StatusInputs(1, delivery=DeliveryStatus(deferred=1, oldest_message_time=OLDEST)), [], OLDEST)
    after = build_status(StatusInputs(1, delivery=f.shown("shop/billing")), [], OLDEST)
    patch = status_patch(after, before)  # a merge patch removes a field only with a null
    assert patch["delivery"] == {"queued": 0, "deferred": 0, "sending": 0, "oldestMessageTime": None}


def test_a_count_that_comes_back_before_the_interval_ends_writes_nothing() -> None:
    f = Fixture()
    f.read("shop/billing", counts(deferred=1), at=0.0)
    f.read("shop/billing", counts(deferred=1, sending=1), at=10.0)
    f.read("shop/billing", counts(deferred=1), at=20.0)  # as before by the time the interval is over
    f.now = INTERVAL
    f.publisher.publish_due()
    assert f.marks == [(0.0, "shop/billing")]


def test_unknown_keeps_what_is_shown_and_no_queue_removes_it() -> None:
    f = Fixture()
    f.publisher.seed("shop/billing", DeliveryStatus(deferred=3))  # in the object's status when the operator started
    f.read("shop/billing", at=0.0)  # no gateway serving it has answered yet
    assert f.marks == [] and f.shown("shop/billing") == DeliveryStatus(deferred=3)
    f.read("shop/billing", None, at=1.0)  # the gateways answer, and run without a queue
    assert f.marks == [(1.0, "shop/billing")] and f.shown("shop/billing") is None
    before = build_status(StatusInputs(1, delivery=DeliveryStatus(deferred=3)), [], OLDEST)
    after = build_status(StatusInputs(1, delivery=None), [], OLDEST)
    assert status_patch(after, before)["delivery"] is None  # a merge patch removes the block only with a null


def test_a_restarted_operator_writes_nothing_for_counts_it_already_shows() -> None:
    f = Fixture()
    f.publisher.seed("shop/billing", DeliveryStatus(deferred=2, oldest_message_time=OLDEST))
    f.read("shop/billing", counts(deferred=2), at=0.0)
    assert f.marks == []


def test_gateways_are_combined_by_the_largest_count_and_the_earliest_message() -> None:
    later = OLDEST.replace(hour=11)
    combined = combine([QueueCounts(1, 5, 0, later), None, QueueCounts(2, 3, 1, OLDEST), NOTHING_PENDING])
    assert combined == QueueCounts(2, 5, 1, OLDEST)
    assert combine([None, None]) is None


async def test_the_background_task_publishes_what_had_to_wait() -> None:
    marked = asyncio.Event()
    reports = {"shop/billing": [counts(deferred=1)]}
    publisher = QueueStatusPublisher(0.05, lambda key: reports[key], lambda keys: marked.set())
    task = asyncio.create_task(publisher.run())
    try:
        publisher.changed(["shop/billing"])
        assert marked.is_set()
        marked.clear()
        reports["shop/billing"] = [NOTHING_PENDING]
        publisher.changed(["shop/billing"])
        assert not marked.is_set()  # within the interval: waits
        await asyncio.wait_for(marked.wait(), 5)
        assert publisher.shown("shop/billing") == DeliveryStatus()
    finally:
        task.cancel()
