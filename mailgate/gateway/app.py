"""Assembling a gateway: the plain objects, the two aiohttp applications, and their lifecycle.

``Gateway`` builds everything once: pool, account registry, relay, metrics,
forwarder, and the two applications (send API with probes, metrics and the
OpenAPI document; admin API on its own port). Callers may add routes to
``gateway.app`` before ``start()`` (``mailgate dev`` adds its capture view),
feed configuration through the admin API or ``apply_snapshot`` (standalone
mode), and run it with ``run_until_signalled``.

Shutdown (``stop``) fits in one budget, ``shutdown_grace`` (``--shutdown-grace``;
the Helm chart passes the pod's ``terminationGracePeriodSeconds``, so the
kubelet never has to SIGKILL a gateway that is still answering). Every part is
derived from it (``ShutdownPlan``), in order, so that every accepted request
gets a true answer:

1. turn unready (``/readyz`` 503) and keep serving for ``shutdown_delay``
   seconds (at most a quarter of the grace), while Kubernetes takes the pod
   out of its Service endpoints;
2. drain: stop accepting connections (HTTP and SMTP); requests and SMTP
   transactions in progress finish on their own, until the drain's end;
3. answer: what still waits on an upstream or a peer is answered now. The
   pool closes: a send still queued for a connection hears "shutting down,
   retry" (true: nothing was sent), a send in progress has its upstream
   session aborted and is answered by the phase it reached (nothing sent,
   or "delivery unknown" once the final dot went out); forwards in flight
   to a peer end as "delivery unknown";
4. close: SMTP sessions still open get ``421``, and those whose client does
   not read it are aborted; HTTP handlers still running are cancelled; idle
   upstream sessions QUIT;
5. stop the admin API last, so the operator can see the pod until the end,
   leaving a margin for the process to exit.

Signals are turned into a call of ``stop`` by ``run_until_signalled`` rather
than aiohttp's ``run_app``: two runners (two ports) and the unready-first
ordering above are not something ``run_app`` offers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from ..pool import SMTPPool
from ..queue.webhooks import WebhookNotifier
from ..relay.accounts import AccountRegistry
from ..relay.core import Relay
from ..relay.outbox import Outbox, OutboxOptions
from ..relay.routing import Router
from ..relay.tokens import TokenSources
from ..snapshot import ConfigSnapshot
from .admin_api import AdminAPI, bearer_middleware
from .auth import Authenticator
from .forward import Forwarder, PeerAdmin, peer_tls
from .http_api import SendAPI
from .messages_api import MessagesAPI
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import GatewayMetrics
from .middleware import request_context
from .openapi import openapi_json
from .probes import Probes
from .queue_metrics import QueueMetrics
from .relay_api import RelayAPI
from .webhook_events import WebhookEvents, WebhookMetrics

log = logging.getLogger("mailgate.gateway")

ADMIN_MAX_BODY = 64 * 1024 * 1024  # a snapshot of many accounts with CA bundles

# The end of a shutdown, in seconds, for a grace of FULL_SIZE seconds or more (a shorter grace shrinks them
# in proportion): answers after the upstream sessions are aborted come within milliseconds; closing covers a
# QUIT (``pool.connection.QUIT_TIMEOUT``) and a client reading its last 421; the process must still exit.
ANSWER, CLOSE, EXIT = 1.0, 2.0, 2.0
FULL_SIZE = 20.0


@dataclass(frozen=True)
class ShutdownPlan:
    """How the shutdown grace is spent, each part in seconds after SIGTERM (see the module docstring)."""

    grace: float
    unready: float  # serving while unready until then
    drain_end: float  # work in progress finishes on its own until then
    answer_end: float  # what still waits on an upstream is answered by then
    close_end: float  # every connection is closed by then; the rest of the grace is for the process to exit

    @classmethod
    def of(cls, grace: float, delay: float) -> ShutdownPlan:
        """The parts of ``grace``; ``delay`` (the unready period) is cut to a quarter of it, so the drain keeps the most."""
        if grace < 0 or delay < 0:
            raise ValueError("the shutdown grace and delay cannot be negative")
        scale = min(1.0, grace / FULL_SIZE)
        close_end = grace - EXIT * scale
        answer_end = close_end - CLOSE * scale
        return cls(grace, min(delay, grace / 4), answer_end - ANSWER * scale, answer_end, close_end)

    def at(self, start: float) -> ShutdownPlan:
        """The same plan with every part as an event loop time, for a shutdown that began at ``start``."""
        return ShutdownPlan(
            self.grace, start + self.unready, start + self.drain_end, start + self.answer_end, start + self.close_end
        )

    @property
    def http_timeout(self) -> float:
        """aiohttp's shutdown timeout: it waits that long for handlers, then as long again for cancelled ones."""
        return max((self.close_end - self.answer_end) / 2, 0.01)


class FrontDoor(Protocol):
    """Another way in besides the HTTP API (the SMTP ingress): started and shut down by the gateway, with it."""

    async def start(self) -> object:
        """Open the listeners; the relay core, the pool and the outbox are running by then."""

    def stop_accepting(self) -> None:
        """Take no new connection or transaction; say goodbye to idle clients."""

    async def drain(self, deadline: float) -> bool:
        """Wait for work in progress to end, at most until ``deadline`` (loop time); True when none is left."""

    async def close(self, deadline: float) -> None:
        """Close whatever is still open, aborting by ``deadline`` what does not close by itself."""


class InFlight:
    """Counts the HTTP requests being handled, so a drain ends as soon as the last one is answered."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.count += 1
        self._idle.clear()
        try:
            return await handler(request)
        finally:
            self.count -= 1
            if not self.count:
                self._idle.set()

    async def wait(self, deadline: float) -> bool:
        """Until no request is in progress, at most until ``deadline`` (loop time); True when none is."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), max(deadline - asyncio.get_running_loop().time(), 0))
        return not self.count


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
    shutdown_delay: float = 0.0  # unready but serving after SIGTERM (at most a quarter of the grace)
    shutdown_grace: float = 30.0  # the whole shutdown, SIGTERM to exit: the pod's terminationGracePeriodSeconds
    admin_tls_cert: str | None = None  # PEM certificate (chain) for the admin API; with admin_tls_key
    admin_tls_key: str | None = None
    peer_admin_port: int | None = None  # peers' admin API port, for relaying SMTP to them; None: this gateway's own
    admin_ca_file: str | None = None  # CA of the peers' admin certificates; None: trust admin_tls_cert's own chain
    queue: OutboxOptions | None = None  # durable delivery (``--queue``); None: synchronous sends only
    # Full snapshots frozen out of the cycle collector (gcpause): the ``mailgate gateway`` process
    # owns its interpreter; an embedded gateway (tests, ``mailgate serve``) leaves it alone.
    freeze_configuration: bool = False


class Gateway:
    def __init__(self, authenticator: Authenticator, options: GatewayOptions | None = None) -> None:
        self.options = options or GatewayOptions()
        if self.options.admin_port is not None and not self.options.admin_token:
            raise ValueError("the admin API needs an admin token")
        self.draining = False
        self.shutdown_plan = ShutdownPlan.of(self.options.shutdown_grace, self.options.shutdown_delay)
        self.doors: list[FrontDoor] = []
        self.in_flight = InFlight()
        self._deadlines: ShutdownPlan | None = None  # the plan as loop times, once stop() began
        self._closing_upstreams: asyncio.Task[None] | None = None
        self._closing_doors: asyncio.Future[list[None]] | None = None  # the doors' close(), while it runs
        self.pool = SMTPPool(close_grace=self.shutdown_plan.close_end - self.shutdown_plan.drain_end)
        self.registry = AccountRegistry(
            self.pool,
            command_timeout=self.options.upstream_timeout,
            local_hostname=self.options.ehlo_hostname,
            tokens=TokenSources(operator_token=self.options.admin_token),
        )
        self.metrics = GatewayMetrics(self.pool, self.registry)
        self.relay = Relay(self.registry, self.pool, self.metrics)
        self.webhooks: WebhookNotifier | None = None  # with a queue: delivery events of queued messages
        self.outbox = self._outbox()
        self.forwarder = Forwarder()
        self.relay.peers = self.forwarder  # messages of accounts whose share here is 0 go to a peer (relay.deliver)
        self.relay_api = RelayAPI(self.relay)  # ...and arrive at that peer's admin API
        self.probes = Probes(lambda: self.registry.received, lambda: self.draining)
        self.router = Router(self.registry)  # sender routing for POST /v1/messages and the SMTP ingress
        self.send_api = SendAPI(
            self.relay, authenticator, self.forwarder, self.router, hostname=self.options.hostname, outbox=self.outbox
        )
        self.messages_api = MessagesAPI(self.relay, authenticator, self.outbox)
        self.admin = AdminAPI(
            self.registry, self.pool, self.probes.ready, queue=self.outbox, freeze=self.options.freeze_configuration
        )
        self.app = self._send_app()
        self.admin_app = self._admin_app() if self.options.admin_port is not None else None
        self._runners: list[web.AppRunner] = []
        self.port: int | None = None
        self.admin_port: int | None = None

    # -- applications -------------------------------------------------------

    def _send_app(self) -> web.Application:
        app = web.Application(middlewares=[self.in_flight.middleware, request_context])
        self.send_api.add_routes(app)
        self.messages_api.add_routes(app)
        self.probes.add_routes(app)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/openapi.json", self._openapi)
        app.on_shutdown.append(self._drain)
        app.cleanup_ctx.append(self._upstreams)
        return app

    def _admin_app(self) -> web.Application:
        assert self.options.admin_token is not None
        app = web.Application(
            middlewares=[request_context, bearer_middleware(self.options.admin_token)], client_max_size=ADMIN_MAX_BODY
        )
        self.admin.add_routes(app)
        self.relay_api.add_routes(app)
        return app

    def _outbox(self) -> Outbox | None:
        if self.options.queue is None:
            return None
        outbox = Outbox(self.options.queue, self.registry, self.pool)
        outbox.observer = QueueMetrics(self.metrics.registry, outbox)
        self.webhooks = WebhookNotifier(observer=WebhookMetrics(self.metrics.registry))
        outbox.events = WebhookEvents(self.webhooks, self.registry)
        return outbox

    def add_door(self, door: FrontDoor) -> None:
        """Start ``door`` with the HTTP API and shut it down within the same deadlines (before ``start()``)."""
        self.doors.append(door)

    async def _upstreams(self, app: web.Application) -> AsyncIterator[None]:
        """The peer client, the pool and the outbox live exactly as long as the send application.

        The outbox opens before the listeners, so no message can be accepted before the
        queue can store it, and closes after the pool, so deliveries cut short record why.
        """
        await self.forwarder.start()
        if self.outbox is not None:
            await self.outbox.start()
        if self.webhooks is not None:
            self.webhooks.start()
        yield
        plan = self._plan()
        if self._closing_doors is not None:
            await _finished(self._closing_doors, plan.close_end)
        closing = self._close_upstreams()
        if not await _finished(closing, plan.close_end):
            log.warning("upstream sessions still closing at the end of the shutdown grace; dropping them")
            closing.cancel()  # each QUIT task's cleanup drops its socket
            await asyncio.wait([closing])
        if self.outbox is not None:
            await self.outbox.stop(plan.close_end)
        if self.webhooks is not None:  # after the outbox: its last deliveries' events may still go out
            await self.webhooks.close(plan.close_end)

    def _plan(self) -> ShutdownPlan:
        if self._deadlines is None:  # the runner stopped without stop(): start the clock now
            self._deadlines = self.shutdown_plan.at(asyncio.get_running_loop().time())
        return self._deadlines

    async def _drain(self, app: web.Application) -> None:
        """Steps 2 to 4 of the module docstring (aiohttp runs this once the listener is closed)."""
        plan = self._plan()
        for door in self.doors:
            door.stop_accepting()
        if not await self._settled(plan.drain_end):
            log.warning("work still in progress at the end of the drain; aborting upstream sessions to answer it")
        self._close_upstreams()
        await self._settled(plan.answer_end)
        # SMTP sessions close while aiohttp shuts the HTTP connections down; _upstreams waits for both.
        self._closing_doors = asyncio.gather(*(door.close(plan.close_end) for door in self.doors))

    async def _settled(self, deadline: float) -> bool:
        """Until no HTTP request and no SMTP session is left, at most until ``deadline``; True when none is."""
        outbox = [] if self.outbox is None else [self.outbox.drain(deadline)]
        done = await asyncio.gather(self.in_flight.wait(deadline), *(door.drain(deadline) for door in self.doors), *outbox)
        return all(done)

    def _close_upstreams(self) -> asyncio.Task[None]:
        """Close the peer client and the pool now (once): queued sends fail, sends in progress are aborted."""
        if self._closing_upstreams is None:

            async def close() -> None:
                await self.forwarder.close()
                await self.pool.close_all(grace=0)
                await self.registry.tokens.close()

            self._closing_upstreams = asyncio.get_running_loop().create_task(close(), name="close-upstreams")
        return self._closing_upstreams

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
        plan = self.shutdown_plan
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=plan.http_timeout, handle_signals=False)
        await runner.setup()
        self._runners.append(runner)
        await web.TCPSite(runner, opts.host, opts.port, backlog=1024).start()
        self.port = _bound_port(runner)
        for door in self.doors:  # after the send application's start-up: the pool and the outbox run
            await door.start()
        if self.admin_app is not None:
            # Stopped last, in the margin left for the process to exit: an operator's push is short.
            admin_timeout = max((plan.grace - plan.close_end) / 4, 0.01)
            admin = web.AppRunner(self.admin_app, access_log=None, shutdown_timeout=admin_timeout, handle_signals=False)
            await admin.setup()
            self._runners.append(admin)
            await web.TCPSite(admin, opts.admin_host or opts.host, opts.admin_port, ssl_context=self._admin_tls()).start()
            self.admin_port = _bound_port(admin)
            self.forwarder.peer_admin = self._peer_admin(self.admin_port)
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

    def _peer_admin(self, own_port: int) -> PeerAdmin:
        """How to reach the peers' admin APIs: the same port and TLS as this gateway's (one Deployment, one setup)."""
        opts = self.options
        assert opts.admin_token is not None
        port = opts.peer_admin_port if opts.peer_admin_port is not None else own_port
        if opts.admin_tls_cert is None:
            return PeerAdmin(port, opts.admin_token)
        return PeerAdmin(port, opts.admin_token, peer_tls(opts.admin_ca_file or opts.admin_tls_cert))

    async def stop(self) -> None:
        """Graceful shutdown as described in the module docstring; safe to call twice."""
        if self.draining and not self._runners:
            return
        self.draining = True
        loop = asyncio.get_running_loop()
        plan = self.shutdown_plan
        self._deadlines = plan.at(loop.time())
        log.info(
            "shutting down within %.1fs: unready for %.1fs, work in progress may finish for %.1fs more",
            plan.grace, plan.unready, plan.drain_end - plan.unready,
        )  # fmt: skip
        if plan.unready > 0:
            await asyncio.sleep(plan.unready)
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


async def _finished(step: asyncio.Future[Any], deadline: float) -> bool:
    """Wait for a shutdown step until ``deadline`` (loop time); True when it is over (a failure is logged, not raised)."""
    done, _ = await asyncio.wait([step], timeout=max(deadline - asyncio.get_running_loop().time(), 0))
    if step in done and not step.cancelled() and step.exception() is not None:
        log.error("a shutdown step failed", exc_info=step.exception())
    return bool(done)


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
