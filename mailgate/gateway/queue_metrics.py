"""Prometheus metrics of the durable outbox, on the gateway's registry.

Counters move as messages are enqueued and attempted; the depth and age
gauges are read at scrape time from the outbox's last ``stats`` (refreshed
every housekeeping interval), so a scrape never queries the database. With a
shared PostgreSQL queue every replica reports the same depth: aggregate the
gauges with ``max``, not ``sum`` (the chart's alerts do).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..queue import MessageState, QueuedMessage
from ..relay.outbox import FINAL, Outbox

_ATTEMPT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class _Depth(Collector):
    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "mailgate_queue_messages", "Undelivered queued messages by account and state.", labels=["account", "state"]
        )
        oldest = GaugeMetricFamily(
            "mailgate_queue_oldest_message_age_seconds",
            "Age of the account's oldest undelivered queued message.",
            labels=["account"],
        )
        now = time.time()
        for account, stats in self.outbox.stats.items():
            for state in (MessageState.QUEUED, MessageState.DEFERRED, MessageState.SENDING):
                depth.add_metric([account, state.value], getattr(stats, state.value))
            oldest.add_metric([account], stats.oldest_age_seconds(now))
        counters = self.outbox.store.counters
        commits = CounterMetricFamily(
            "mailgate_queue_commits", "Durable commits of enqueued messages (fewer than messages: group commit)."
        )
        commits.add_metric([], counters.enqueue_commits)
        failures = CounterMetricFamily("mailgate_queue_enqueue_failures", "Enqueues the store could not commit.")
        failures.add_metric([], counters.enqueue_failures)
        yield from (depth, oldest, commits, failures)


class QueueMetrics:
    """The outbox's observer: counts enqueues, attempts and final states."""

    def __init__(self, registry: CollectorRegistry, outbox: Outbox) -> None:
        self.enqueued_total = Counter(
            "mailgate_queue_enqueued", "Messages accepted into the durable queue.", ["account"], registry=registry
        )
        self.attempts = Counter(
            "mailgate_queue_attempts",
            "Delivery attempts by outcome: delivered, refused (every recipient), busy, unreachable, timeout, auth, "
            "reply (the upstream refused the transaction), delivery-unknown.",
            ["account", "outcome"],
            registry=registry,
        )
        self.attempt_duration = Histogram(
            "mailgate_queue_attempt_duration_seconds",
            "Time of one delivery attempt, connection wait included.",
            ["account"],
            buckets=_ATTEMPT_BUCKETS,
            registry=registry,
        )
        self.finished = Counter(
            "mailgate_queue_finished",
            "Queued messages that reached a final state: sent, or failed (refused, expired or delivery unknown).",
            ["account", "state"],
            registry=registry,
        )
        registry.register(_Depth(outbox))

    def enqueued(self, account: str) -> None:
        self.enqueued_total.labels(account).inc()

    def attempt(self, account: str, outcome: str, duration: float) -> None:
        self.attempts.labels(account, outcome).inc()
        self.attempt_duration.labels(account).observe(duration)

    def recorded(self, message: QueuedMessage) -> None:
        if message.state in FINAL:
            self.finished.labels(message.account, message.state.value).inc()

    def expired(self, message_ids: Sequence[str]) -> None:
        return None  # the outbox loads them and reports each through ``recorded``
