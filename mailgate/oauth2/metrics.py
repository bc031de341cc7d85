"""Token metrics, the same in the gateway (standalone) and the operator (in a cluster).

``<prefix>_oauth2_token_requests_total{account, outcome}`` counts token
requests: ``issued``, ``refused`` (the endpoint said no: a wrong secret, an
unknown client) or ``unavailable`` (unreachable, timed out, 5xx, a malformed
answer). ``<prefix>_oauth2_token_remaining_seconds{account}`` is read at
scrape time from whoever holds the tokens, so it never goes stale. Labels are
account keys only: no token, client ID or tenant.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .endpoint import AccessToken, TokenError

Expiries = Callable[[], Mapping[str, float | None]]
"""account key -> when its current token expires (Unix seconds), or None without one."""


class TokenMetrics:
    """A ``TokenObserver`` that counts requests, plus the remaining-lifetime gauge."""

    def __init__(self, registry: CollectorRegistry, prefix: str, expiries: Expiries) -> None:
        self.requests = Counter(
            f"{prefix}_oauth2_token_requests",
            "OAuth2 token requests by account and outcome (issued, refused, unavailable).",
            ["account", "outcome"],
            registry=registry,
        )
        registry.register(_Remaining(f"{prefix}_oauth2_token_remaining_seconds", expiries))

    def token_issued(self, key: str, token: AccessToken) -> None:
        self.requests.labels(key, "issued").inc()

    def token_failed(self, key: str, error: TokenError, retry_in: float) -> None:
        self.requests.labels(key, "unavailable" if error.retryable else "refused").inc()


class _Remaining(Collector):
    def __init__(self, name: str, expiries: Expiries) -> None:
        self.name = name
        self.expiries = expiries

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            self.name, "Seconds until the account's current OAuth2 access token expires (0 once expired).", labels=["account"]
        )
        now = time.time()
        for key, expires_at in sorted(self.expiries().items()):
            if expires_at is not None:
                gauge.add_metric([key], max(expires_at - now, 0.0))
        yield gauge
