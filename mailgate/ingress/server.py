"""The SMTP ingress listeners: start, limit, and stop them so that every client gets an answer.

Runs on the gateway's own event loop (``loop.create_server`` with the
session protocol, not aiosmtpd's threaded ``Controller``), next to the HTTP
API, sharing its registry, relay core and pool.

- Connection limit: a client beyond ``max_connections`` gets ``421`` and is
  disconnected at once, never queued behind the others.
- Shutdown (SIGTERM): the listeners close first; idle sessions get ``421``
  at once; a session inside a transaction finishes it (the client hears the
  upstream's verdict) and then gets ``421``; whatever is still open after the
  grace period gets ``421`` anyway. Only then may the pool close.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time

from ..gateway.accounts import AccountRegistry
from ..gateway.relay import Relay
from .clients import ClientAuthenticator, ClientDirectory
from .options import IngressOptions
from .routing import Router
from .session import DEFAULT_SIZE, Handler, IngressContext, IngressSMTP
from .tls import CertificateFiles

log = logging.getLogger("mailgate.ingress")

# aiosmtpd logs every command line at INFO, AUTH PLAIN's base64 credentials included, and a deprecation
# warning on every successful AUTH: the ingress logs what matters itself.
logging.getLogger("mail.log").setLevel(logging.ERROR)


class _TooBusy(asyncio.Protocol):
    """Answers a connection over the limit with 421 and hangs up, costing no session."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(f"421 4.7.0 {self.hostname} Too many connections, try again later\r\n".encode("ascii"))
        transport.close()


class IngressServer:
    """The SMTP listener(s) of one gateway process."""

    def __init__(self, options: IngressOptions, registry: AccountRegistry, relay: Relay) -> None:
        if not options.enabled:
            raise ValueError("the SMTP ingress needs --smtp-port or --smtp-implicit-tls-port")
        self.options = options
        self.router = Router(registry, options.default_account)
        self.directory = ClientDirectory(registry)
        self.certificate = CertificateFiles(options.tls_cert, options.tls_key) if options.tls_cert and options.tls_key else None
        self.context = IngressContext(
            options=options,
            router=self.router,
            authenticator=ClientAuthenticator(self.directory),
            relay=relay,
            max_size=lambda: max((a.config.spec.max_message_bytes for a in registry.accounts().values()), default=DEFAULT_SIZE),
        )
        self.handler = Handler(self.context)
        self.sessions: set[IngressSMTP] = set()
        self._servers: list[asyncio.Server] = []
        self._ports: dict[str, int] = {}
        self._closed = asyncio.Event()
        self._stopping = False

    @property
    def ports(self) -> dict[str, int]:
        """Bound ports by listener (``smtp``, ``smtps``), empty until started: useful when started with port 0."""
        return dict(self._ports)

    async def start(self) -> IngressServer:
        loop = asyncio.get_running_loop()
        tls = self.certificate.context() if self.certificate is not None else None
        listeners = [("smtp", self.options.port, False), ("smtps", self.options.implicit_tls_port, True)]
        for name, port, implicit in listeners:
            if port is None:
                continue
            server = await loop.create_server(
                functools.partial(self._session, implicit=implicit), self.options.host, port, ssl=tls if implicit else None
            )
            self._servers.append(server)
            self._ports[name] = server.sockets[0].getsockname()[1]
        where = ", ".join(f"{name} {self.options.host}:{port}" for name, port in self._ports.items())
        log.info("SMTP ingress listening on %s", where)
        return self

    def _session(self, *, implicit: bool) -> asyncio.Protocol:
        if self._stopping or len(self.sessions) >= self.options.max_connections:
            return _TooBusy(self.options.hostname)
        tls = self.certificate.context() if self.certificate is not None else None
        session = IngressSMTP(
            self.context,
            self.handler,
            tls_context=tls,
            implicit_tls=implicit,
            on_open=self.sessions.add,  # not here: a failed TLS handshake never reaches connection_lost
            on_close=self._forget,
            loop=asyncio.get_running_loop(),
        )
        return session

    def _forget(self, session: IngressSMTP) -> None:
        self.sessions.discard(session)
        if self._stopping and not self.sessions:
            self._closed.set()

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, answer every open session definitively, and return when all are closed."""
        self._stopping = True
        for server in self._servers:
            server.close()
        grace = self.options.shutdown_grace if grace is None else grace
        deadline = time.monotonic() + grace
        for session in list(self.sessions):
            session.closing = True
            if session.idle:
                await session.goodbye()
        if self.sessions:
            self._closed.clear()
            try:
                await asyncio.wait_for(self._closed.wait(), max(deadline - time.monotonic(), 0))
            except TimeoutError:
                log.warning("%d SMTP session(s) still open after %.0fs; closing them", len(self.sessions), grace)
        for session in list(self.sessions):
            await session.goodbye()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
