"""Assembling a gateway: the plain objects, the two aiohttp applications, and their lifecycle.

``Gateway`` builds everything once: pool, account registry, relay, metrics,
forwarder, and the two applications (send API with probes, metrics and the
OpenAPI document; admin API on its own port). Callers may add routes to
``gateway.app`` before ``start()`` (``mailgate dev`` adds its capture view),
feed configuration through the admin API or ``apply_snapshot`` (standalone
mode), and run it with ``run_until_signalled``.

Shutdown, in order (``stop``), so that every accepted request gets an answer:

1. turn unready (``/readyz`` 503) and keep serving for ``shutdown_delay``
   seconds, while Kubernetes takes the pod out of its Service endpoints;
2. stop accepting connections; requests in flight finish within
   ``shutdown_grace`` seconds (aiohttp's ``AppRunner`` shutdown);
3. on the application's cleanup, close the peer client and QUIT every
   upstream session (``SMTPPool.close_all``);
4. stop the admin API last, so the operator can see the pod until the end.

Signals are turned into a call of ``stop`` by ``run_until_signalled`` rather
than aiohttp's ``run_app``: two runners (two ports) and the unready-first
ordering above are not something ``run_app`` offers.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

from ..pool import SMTPPool
from ..snapshot import ConfigSnapshot
from .accounts import AccountRegistry
from .admin_api import AdminAPI, bearer_middleware
from .auth import Authenticator
from .forward import Forwarder
from .http_api import SendAPI
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import GatewayMetrics
from .middleware import request_context
from .openapi import openapi_json
from .probes import Probes
from .relay import Relay

log = logging.getLogger("mailgate.gateway")

ADMIN_MAX_BODY = 64 * 1024 * 1024  # a snapshot of many accounts with CA bundles


@dataclass
class GatewayOptions:
    """Everything a gateway process is started with (the ``mailgate gateway`` flags)."""

    host: str = "127.0.0.1"
    port: int = 8080  # 0 picks a free port (tests); see Gateway.port after start()
    admin_host: str | None = None  # default: same as host
    admin_port: int | None = 8081  # None: no admin API (standalone mode feeds apply_snapshot)
    admin_token: str | None = field(default=None, repr=False)
    hostname: str = field(default_factory=socket.gethostname)  # right-hand side of generated Message-IDs
    ehlo_hostname: str | None = None  # None: aiosmtplib's default (the FQDN)
    upstream_timeout: float = 30.0  # per SMTP command, connect included
    shutdown_delay: float = 0.0
    shutdown_grace: float = 30.0
    admin_tls_cert: str | None = None  # PEM certificate (chain) for the admin API; with admin_tls_key
    admin_tls_key: str | None = None


class Gateway:
    def __init__(self, authenticator: Authenticator, options: GatewayOptions | None = None) -> None:
        self.options = options or GatewayOptions()
        if self.options.admin_port is not None and not self.options.admin_token:
            raise ValueError("the admin API needs an admin token")
        self.draining = False
        self.pool = SMTPPool(close_grace=self.options.shutdown_grace)
        self.registry = AccountRegistry(
            self.pool, command_timeout=self.options.upstream_timeout, local_hostname=self.options.ehlo_hostname
        )
        self.metrics = GatewayMetrics(self.pool, self.registry)
        self.relay = Relay(self.registry, self.pool, self.metrics)
        self.forwarder = Forwarder()
        self.probes = Probes(lambda: self.registry.received, lambda: self.draining)
        self.send_api = SendAPI(self.relay, authenticator, self.forwarder, hostname=self.options.hostname)
        self.admin = AdminAPI(self.registry, self.pool, self.probes.ready)
        self.app = self._send_app()
        self.admin_app = self._admin_app() if self.options.admin_port is not None else None
        self._runners: list[web.AppRunner] = []
        self.port: int | None = None
        self.admin_port: int | None = None

    # -- applications -------------------------------------------------------

    def _send_app(self) -> web.Application:
        app = web.Application(middlewares=[request_context])
        self.send_api.add_routes(app)
        self.probes.add_routes(app)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/openapi.json", self._openapi)
        app.cleanup_ctx.append(self._upstreams)
        return app

    def _admin_app(self) -> web.Application:
        assert self.options.admin_token is not None
        app = web.Application(
            middlewares=[request_context, bearer_middleware(self.options.admin_token)], client_max_size=ADMIN_MAX_BODY
        )
        self.admin.add_routes(app)
        return app

    async def _upstreams(self, app: web.Application) -> AsyncIterator[None]:
        """The peer client and the pool live exactly as long as the send application."""
        await self.forwarder.start()
        yield
        await self.forwarder.close()
        await self.pool.close_all(grace=self.options.shutdown_grace)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=openapi_json(), content_type="application/json")

    # -- configuration --------------------------------------------------------

    async def apply_snapshot(self, snapshot: ConfigSnapshot) -> bool:
        """For standalone mode: what ``PUT /v1/config`` does, without HTTP. Raises as the registry does."""
        return self.registry.apply_snapshot(snapshot)

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Listen on both ports; ``self.port`` / ``self.admin_port`` hold the bound ports."""
        opts = self.options
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=opts.shutdown_grace, handle_signals=False)
        await runner.setup()
        self._runners.append(runner)
        await web.TCPSite(runner, opts.host, opts.port, backlog=1024).start()
        self.port = _bound_port(runner)
        if self.admin_app is not None:
            admin = web.AppRunner(self.admin_app, access_log=None, shutdown_timeout=5.0, handle_signals=False)
            await admin.setup()
            self._runners.append(admin)
            await web.TCPSite(admin, opts.admin_host or opts.host, opts.admin_port, ssl_context=self._admin_tls()).start()
            self.admin_port = _bound_port(admin)
        log.info(
            "gateway listening: send API on %s:%s, admin API on %s",
            opts.host,
            self.port,
            f"{opts.admin_host or opts.host}:{self.admin_port}" if self.admin_app is not None else "(disabled)",
            extra={"port": self.port, "adminPort": self.admin_port},
        )

    def _admin_tls(self) -> ssl.SSLContext | None:
        """TLS for the admin API: the bearer token and pushed credentials cross the pod network on it."""
        if self.options.admin_tls_cert is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.options.admin_tls_cert, self.options.admin_tls_key)
        return context

    async def stop(self) -> None:
        """Graceful shutdown as described in the module docstring; safe to call twice."""
        if self.draining and not self._runners:
            return
        self.draining = True
        log.info("shutting down: unready now, draining for %.1fs", self.options.shutdown_delay)
        if self.options.shutdown_delay > 0:
            await asyncio.sleep(self.options.shutdown_delay)
        for runner in self._runners:  # send API first, admin last
            await runner.cleanup()
        self._runners.clear()
        log.info("gateway stopped")

    @property
    def url(self) -> str:
        return f"http://{_url_host(self.options.host)}:{self.port}"

    @property
    def admin_url(self) -> str:
        scheme = "https" if self.options.admin_tls_cert else "http"
        return f"{scheme}://{_url_host(self.options.admin_host or self.options.host)}:{self.admin_port}"


def _bound_port(runner: web.AppRunner) -> int:
    address = runner.addresses[-1]
    return int(address[1])


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


async def run_until_signalled(gateway: Gateway) -> None:
    """Start, serve until SIGTERM or SIGINT, then stop gracefully."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await gateway.start()
        await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await gateway.stop()
