"""Prometheus metrics of one gateway, on a private registry (tests run several gateways in one process).

Counters and histograms are updated as messages go through the relay; pool
state, upstream health and the config revision are read at scrape time from
the objects that own them, so they can never drift from the truth.

Labels are account keys (``namespace/name``, bounded by the configuration),
outcomes (``sent`` or a problem slug, a fixed set) and pool states: never an
address, a user name or anything from a credential. Requests naming an
unknown account are counted under ``account="-"``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..oauth2.metrics import TokenMetrics
from ..pool import SMTPPool
from ..relay.accounts import AccountRegistry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_POOL_STATES = ("idle", "active", "opening", "waiting")


class _LiveState(Collector):
    """Pool connections by state, closes by reason, upstream health and config revision, read per scrape."""

    def __init__(self, pool: SMTPPool, accounts: AccountRegistry) -> None:
        self.pool = pool
        self.accounts = accounts

    def collect(self) -> Iterator[Metric]:
        connections = GaugeMetricFamily(
            "mailgate_pool_connections",
            "Upstream connections by state (waiting: sends queued for one).",
            labels=["account", "state"],
        )
        closed = CounterMetricFamily(
            "mailgate_pool_connections_closed", "Upstream connections closed, by reason.", labels=["account", "reason"]
        )
        healthy = GaugeMetricFamily(
            "mailgate_upstream_healthy",
            "1 when the last connect or NOOP to the account's upstream succeeded, 0 when it failed; absent before the first.",
            labels=["account"],
        )
        for account, stats in self.pool.stats().items():
            for state in _POOL_STATES:
                connections.add_metric([account, state], stats[state])
            for reason, count in stats["closed"].items():
                closed.add_metric([account, reason], count)
            health = self.pool.health(account)
            if health is not None:
                healthy.add_metric([account], 1.0 if health.ok else 0.0)
        revision = GaugeMetricFamily("mailgate_config_revision", "Revision of the configuration this gateway serves.")
        revision.add_metric([], self.accounts.revision)
        ready = GaugeMetricFamily("mailgate_config_received", "1 once a configuration snapshot has been received.")
        ready.add_metric([], 1.0 if self.accounts.received else 0.0)
        yield from (connections, closed, healthy, revision, ready)


class GatewayMetrics:
    """The relay's ``Observer`` plus the scrape endpoint's text."""

    def __init__(self, pool: SMTPPool, accounts: AccountRegistry) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.messages = Counter(
            "mailgate_messages",
            "Send requests by account and outcome (sent, or the problem type slug).",
            ["account", "outcome"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "mailgate_send_duration_seconds",
            "Time from handing a message to the pool to the upstream's final answer.",
            ["account"],
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.pool_wait = Histogram(
            "mailgate_pool_wait_seconds",
            "Time a send waited for an upstream connection (connect included when one was opened).",
            ["account"],
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_LiveState(pool, accounts))
        accounts.tokens.observer = TokenMetrics(self.registry, "mailgate", accounts.tokens.expiries)

    def observe(self, account: str, outcome: str, duration: float | None, pool_wait: float | None) -> None:
        self.messages.labels(account, outcome).inc()
        if duration is not None:
            self.duration.labels(account).observe(duration)
        if pool_wait is not None:
            self.pool_wait.labels(account).observe(pool_wait)

    def render(self) -> bytes:
        return generate_latest(self.registry)
