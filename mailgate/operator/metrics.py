"""Prometheus metrics of the operator, and the small HTTP servers it runs besides kopf's.

A registry per ``OperatorMetrics`` (not the global one), so that tests can
build several without "duplicated timeseries" errors.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .refresh_api import TokenRefreshAPI

_PUSH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class OperatorMetrics:
    """Reconciles, pushes (latency and failures), status patches and what the operator sees."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reconciles = Counter(
            "mailgate_operator_reconciles_total",
            "SmtpAccount reconciles, by trigger (create, update, delete, secret, resync) and result.",
            ["trigger", "result"],
            registry=self.registry,
        )
        self.push_seconds = Histogram(
            "mailgate_operator_push_duration_seconds",
            "Duration of successful pushes to a gateway admin API, by kind (full, account, delete).",
            ["kind"],
            buckets=_PUSH_BUCKETS,
            registry=self.registry,
        )
        self.push_failures = Counter(
            "mailgate_operator_push_failures_total",
            "Failed calls to a gateway admin API, by reason (unreachable, conflict, http_<status>).",
            ["reason"],
            registry=self.registry,
        )
        self.status_patches = Counter(
            "mailgate_operator_status_patches_total",
            "SmtpAccount status patches, by result.",
            ["result"],
            registry=self.registry,
        )
        self.resyncs = Counter(
            "mailgate_operator_account_resyncs_total",
            "Periodic SmtpAccount resync passes, by result (ok, failed, skipped: start-up listings not done).",
            ["result"],
            registry=self.registry,
        )
        self.resync_repairs = Counter(
            "mailgate_operator_account_resync_repairs_total",
            "What the periodic resync repaired, by kind: SmtpAccounts (missing: never reconciled, stale: an older "
            "generation reconciled, gone: served after its object vanished, finalizer: finalizer added, deleted: a "
            "deletion held by our finalizer finished) and "
            "Secrets (secret: a change whose watch event was lost, applied).",
            ["kind"],
            registry=self.registry,
        )
        self.resync_listed = Gauge(
            "mailgate_operator_account_resync_listed",
            "SmtpAccounts the last resync pass listed (compare with mailgate_operator_accounts).",
            registry=self.registry,
        )
        self.gateways = Gauge("mailgate_operator_gateways", "Gateway pods that receive configuration.", registry=self.registry)
        self.accounts = Gauge("mailgate_operator_accounts", "SmtpAccounts the operator serves.", registry=self.registry)
        self.leader = Gauge("mailgate_operator_leader", "1 while this replica is the active one.", registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def metrics_app(metrics: OperatorMetrics, token_refresh: TokenRefreshAPI | None = None) -> web.Application:
    """``/metrics``, and the gateways' ``POST /v1/token-refresh`` when given."""

    async def handle(_: web.Request) -> web.Response:
        response = web.Response(body=metrics.render())
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    app = web.Application()
    app.router.add_get("/metrics", handle)
    if token_refresh is not None:
        token_refresh.add_routes(app)
    return app


def standby_health_app() -> web.Application:
    """Liveness while this replica waits for the Lease (kopf, and its own probe, are not running yet)."""

    async def handle(_: web.Request) -> web.Response:
        return web.json_response({"standby": True})

    app = web.Application()
    app.router.add_get("/healthz", handle)
    return app


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start ``app`` on host:port; the caller owns the returned runner (``await runner.cleanup()``)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
