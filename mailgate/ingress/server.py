"""The SMTP ingress listeners: start, limit, and stop them so that every client gets an answer.

Runs on the gateway's own event loop (``loop.create_server`` with the
session protocol, not aiosmtpd's threaded ``Controller``), next to the HTTP
API, sharing its registry, relay core and pool.

- Connection limit: a client beyond ``max_connections`` gets ``421`` and is
  disconnected at once, never queued behind the others.
- Shutdown (SIGTERM), in three steps the gateway drives with its deadlines
  (``Gateway.stop``; ``stop`` runs them alone): ``stop_accepting`` closes the
  listeners and says ``421`` to idle sessions at once; ``drain`` lets a
  session inside a transaction finish it (the client hears the upstream's
  verdict, then ``421``); ``close`` says ``421`` to whatever is still open
  and aborts, at its deadline, every connection whose client has not taken
  that reply. No step waits on a client to read: one that pipelines commands
  and never reads cannot hold up a shutdown, nor keep a session slot past
  the command timeout (see ``session.IngressSMTP.hang_up``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

from ..relay.accounts import AccountRegistry
from ..relay.core import Relay
from ..relay.outbox import Outbox
from ..relay.routing import Router
from .clients import AccountSource, ClientAuthenticator, ClientDirectory
from .options import IngressOptions
from .session import DEFAULT_SIZE, Handler, IngressContext, IngressSMTP
from .tls import CertificateFiles

log = logging.getLogger("mailgate.ingress")

CLOSING = 2.0  # ``stop``: after the grace, how long a client may take to read its 421 before it is aborted
ABORTED = 1.0  # an aborted connection is gone on the next loop turn; this only bounds the wait for it

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


class _LargestLimit:
    """The largest ``maxMessageBytes`` of all accounts, which EHLO advertises before a login.

    Worked out again only when the registry's revision moves, not on every
    EHLO: that went through every account, twice per connection for an app
    that says EHLO again after STARTTLS.
    """

    def __init__(self, registry: AccountSource) -> None:
        self.registry = registry
        self._seen: tuple[int, bool] | None = None
        self._largest = DEFAULT_SIZE

    def __call__(self) -> int:
        seen = (self.registry.revision, self.registry.received)
        if seen != self._seen:
            accounts = self.registry.accounts().values()
            self._largest = max((account.config.spec.max_message_bytes for account in accounts), default=DEFAULT_SIZE)
            self._seen = seen
        return self._largest


class IngressServer:
    """The SMTP listener(s) of one gateway process."""

    def __init__(
        self,
        options: IngressOptions,
        registry: AccountRegistry,
        relay: Relay,
        outbox: Outbox | None = None,
        router: Router | None = None,
    ) -> None:
        if not options.enabled:
            raise ValueError("the SMTP ingress needs --smtp-port or --smtp-implicit-tls-port")
        self.options = options
        self.router = router if router is not None else Router(registry)
        if options.default_account is not None:  # the gateway's one router: POST /v1/messages uses it too
            self.router.default_account = options.default_account
        self.directory = ClientDirectory(registry)
        self.certificate = CertificateFiles(options.tls_cert, options.tls_key) if options.tls_cert and options.tls_key else None
        self.context = IngressContext(
            options=options,
            router=self.router,
            authenticator=ClientAuthenticator(self.directory),
            relay=relay,
            max_size=_LargestLimit(registry),
            outbox=outbox,
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

    def stop_accepting(self) -> None:
        """Close the listeners and say ``421`` to idle sessions; sessions inside a transaction go on."""
        self._stopping = True
        for server in self._servers:
            server.close()
        for session in list(self.sessions):
            session.closing = True  # says 421 itself once its transaction is over
            if session.idle:
                session.goodbye()

    async def drain(self, deadline: float) -> bool:
        """Wait until every session has ended, or until ``deadline`` (event loop time); True when none is left."""
        if not self.sessions:
            return True
        self._closed.clear()
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(self._closed.wait(), max(deadline - loop.time(), 0))
        except TimeoutError:
            pass
        return not self.sessions

    async def close(self, deadline: float) -> None:
        """``421`` to every session still open, then abort at ``deadline`` those whose client did not take it."""
        self.stop_accepting()
        if self.sessions:
            log.warning("%d SMTP session(s) still open at the end of the shutdown grace; closing them", len(self.sessions))
        for session in list(self.sessions):
            session.goodbye()
        if not await self.drain(deadline):
            log.warning("aborting %d SMTP session(s) whose client does not read", len(self.sessions))
            for session in list(self.sessions):
                session.abort()
            await self.drain(asyncio.get_running_loop().time() + ABORTED)
        for server in self._servers:
            # Since Python 3.12 this also waits for every connection, a TLS handshake in progress included.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), ABORTED)
        self._servers.clear()

    async def stop(self, grace: float | None = None) -> None:
        """All three steps on their own (``grace`` for transactions to finish, default the option), then return.

        Returns within ``grace`` plus ``CLOSING`` seconds whatever the clients
        do, with every session closed.
        """
        loop = asyncio.get_running_loop()
        grace = self.options.shutdown_grace if grace is None else grace
        drained = loop.time() + grace
        self.stop_accepting()
        await self.drain(drained)
        await self.close(max(loop.time(), drained) + CLOSING)
