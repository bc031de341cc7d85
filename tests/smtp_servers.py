"""Real SMTP servers for tests: aiosmtpd upstreams with scripted faults.

Each ``Upstream`` runs aiosmtpd in its own thread and event loop (its
``Controller``), so a stall or a slow reply on the server side never blocks
the test's own loop. Knobs are plain attributes the test flips at run time;
counters record what the server really saw (sessions, logins, messages).
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


@dataclass
class Received:
    """One message as the upstream accepted it."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    login: str | None
    mail_options: list[str]


@dataclass
class Counters:
    """What the server saw; updated from the server thread under ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sessions_open: int = 0
    sessions_peak: int = 0
    sessions_total: int = 0
    noops: int = 0
    hangups_after_421: int = 0  # sessions the server closed itself after a 421 (``close_after_421``)
    logins: list[tuple[str, str, str]] = field(default_factory=list)  # (mechanism, user, secret)


class TestCA:
    """A throwaway CA: certificates are made at test time, never checked in."""

    __test__ = False  # a helper, not a test class

    def __init__(self) -> None:
        self.ca = trustme.CA()
        self.server_cert = self.ca.issue_cert("127.0.0.1", "localhost")

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_cert.configure_cert(context)
        return context

    @property
    def ca_pem(self) -> str:
        return self.ca.cert_pem.bytes().decode()


class _UpstreamSMTP(SMTP):
    """aiosmtpd's SMTP plus session accounting, XOAUTH2 and connection-level faults."""

    def __init__(self, upstream: Upstream, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.upstream = upstream

    def connection_made(self, transport: Any) -> None:
        peer = transport.get_extra_info("peername")
        is_trigger = peer is not None and peer[1] == self.upstream._trigger_port
        if not getattr(self, "_counted", False) and not is_trigger:
            self._counted = True
            counters = self.upstream.counters
            with counters.lock:
                counters.sessions_open += 1
                counters.sessions_total += 1
                counters.sessions_peak = max(counters.sessions_peak, counters.sessions_open)
            self.upstream._register(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        # STARTTLS replaces the transport and calls connection_lost on the old one.
        if not self._tls_handshake_okay or self.transport is None or self.transport.is_closing():
            self._uncount()
        super().connection_lost(error)

    def _uncount(self) -> None:
        if getattr(self, "_counted", False) and not getattr(self, "_uncounted", False):
            self._uncounted = True
            with self.upstream.counters.lock:
                self.upstream.counters.sessions_open -= 1
            self.upstream._unregister(self)

    async def push(self, status: Any) -> None:
        text = status.decode() if isinstance(status, bytes) else status
        hang_up = self.upstream.close_after_421 and text.startswith("421")
        if hang_up:  # counted before the client can see the 421, so a test reading it never races the server
            with self.upstream.counters.lock:
                self.upstream.counters.hangups_after_421 += 1
        try:
            await super().push(status)
        finally:
            if hang_up and self.transport is not None:
                self.transport.close()  # what a real MTA does after saying 421: the session is over

    async def smtp_NOOP(self, arg: str) -> None:
        with self.upstream.counters.lock:
            self.upstream.counters.noops += 1
        gate = self.upstream._noops_gate
        if gate is not None:
            await gate.wait()
        await super().smtp_NOOP(arg)

    async def smtp_DATA(self, arg: str) -> None:
        if self.upstream.data_command_reply and self.envelope is not None and self.envelope.rcpt_tos:
            await self.push(self.upstream.data_command_reply)  # refuses DATA itself; the transaction stays open
            return
        if self.upstream.drop_at_data:
            assert self.transport is not None  # set while the session runs a command
            self.transport.close()
            return
        if self.upstream.drop_in_content and self.envelope is not None and self.envelope.rcpt_tos:
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            first_line = await self._reader.readuntil(b"\r\n")
            self.upstream.partial.append(first_line)  # proof that the text had started to arrive
            assert self.transport is not None
            self.transport.close()
            return
        await super().smtp_DATA(arg)

    async def auth_XOAUTH2(self, _: Any, args: list[str]) -> AuthResult:
        """RFC-less but universal: base64("user=U\\x01auth=Bearer T\\x01\\x01")."""
        raw = args[1] if len(args) > 1 else ""
        try:
            fields = base64.b64decode(raw).decode().split("\x01")
            user = fields[0].removeprefix("user=")
            token = fields[1].removeprefix("auth=Bearer ")
        except Exception:
            await self.push("501 5.5.2 Can't decode XOAUTH2")
            return AuthResult(success=False, handled=True)
        return self._authenticate("XOAUTH2", LoginPassword(user.encode(), token.encode()))


class _Handler:
    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:
        reply = self.upstream.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        upstream = self.upstream
        if upstream.data_delay:
            import asyncio

            await asyncio.sleep(upstream.data_delay)
        if upstream.data_reply:
            reply = upstream.data_reply
            if reply.startswith("421") and not upstream.close_after_421:
                assert server.transport is not None
                server.transport.close()  # hangs up before the 421 is sent: the client sees a bare drop
            return reply
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        upstream.messages.append(
            Received(
                mail_from=envelope.mail_from or "",
                rcpt_tos=list(envelope.rcpt_tos),
                data=envelope.original_content or b"",
                login=login,
                mail_options=list(envelope.mail_options),
            )
        )
        upstream.message_event.set()
        await upstream._hold_reply(upstream.messages[-1])
        if upstream.drop_after_dot:
            assert server.transport is not None
            server.transport.close()  # the message is taken in, but its 250 never leaves
        return "250 2.0.0 OK queued"


class Upstream:
    """One aiosmtpd server on 127.0.0.1 with TLS, AUTH and fault knobs."""

    def __init__(
        self,
        *,
        tls: str = "none",
        ca: TestCA | None = None,
        users: dict[str, str] | None = None,
        tokens: dict[str, str] | None = None,
        token_check: Callable[[str, str], bool] | None = None,
        auth_exclude: list[str] | None = None,
    ) -> None:
        self.tls = tls
        self.token_check = token_check  # (mailbox, token) -> bool for XOAUTH2, e.g. TokenServer.is_valid; else ``tokens``
        self.auth_exclude = list(auth_exclude or [])  # e.g. ["PLAIN"] to make clients use LOGIN
        self.ca = ca
        self.users = dict(users or {})
        self.tokens = dict(tokens or {})
        self.counters = Counters()
        self.messages: list[Received] = []
        self.message_event = threading.Event()
        self.rcpt_replies: dict[str, str] = {}
        self.data_reply: str | None = None
        self.data_delay: float = 0.0
        # Hang-ups at each point of a transaction, as providers and networks do them:
        self.drop_at_data = False  # on the DATA command itself, before a 354: nothing can have arrived
        self.data_command_reply: str | None = None  # a reply to the DATA command (not to the dot), e.g. "554 ..."
        self.drop_in_content = False  # after the 354 and the first line of the text: the text is cut off
        self.drop_after_dot = False  # after the whole text and its dot were taken in: the message *was* received
        self.partial: list[bytes] = []  # the first line of each text drop_in_content cut off
        self.close_after_421 = False  # hang up after every 421 reply, as real servers do (default: keep the session)
        self._noops_gate: asyncio.Event | None = None  # None: answer NOOPs at once
        self.held: list[Received] = []  # messages whose final-dot reply hold_replies() kept back
        self.held_event = threading.Event()
        self._replies_gate: asyncio.Event | None = None  # None: reply at once
        self._sessions: set[_UpstreamSMTP] = set()
        self._sessions_lock = threading.Lock()
        self._trigger_port: int | None = None
        self.port = _free_port()
        self._controller = self._make_controller()

    def _make_controller(self) -> Controller:
        upstream = self
        kwargs: dict[str, Any] = {}
        server_ssl: ssl.SSLContext | None = None
        if self.tls in ("starttls", "implicit"):
            assert self.ca is not None, "TLS upstreams need a TestCA"
        if self.tls == "starttls":
            kwargs.update(tls_context=self.ca.server_context(), require_starttls=True)  # type: ignore[union-attr]
        if self.tls == "implicit":
            server_ssl = self.ca.server_context()  # type: ignore[union-attr]
        if self.users or self.tokens or self.token_check:
            kwargs.update(authenticator=self._authenticate, auth_required=True, auth_require_tls=self.tls == "starttls")
        if self.auth_exclude:
            kwargs.update(auth_exclude_mechanism=self.auth_exclude)

        class _Controller(Controller):
            def factory(self) -> SMTP:
                return _UpstreamSMTP(upstream, self.handler, **self.SMTP_kwargs)

            def _trigger_server(self) -> None:
                # The stock trigger opens a throwaway session (and a TLS handshake);
                # counting sessions must not see it, so wait for the factory instead.
                with socket.socket() as sock:
                    # Its connection_made may run before or after start() resets the counters: skip it
                    # by its port, known before connecting.
                    sock.bind((self.hostname, 0))
                    upstream._trigger_port = sock.getsockname()[1]
                    sock.settimeout(5)
                    sock.connect((self.hostname, self.port))
                self._factory_invoked.wait(5)

        return _Controller(_Handler(self), hostname="127.0.0.1", port=self.port, ssl_context=server_ssl, **kwargs)

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
        user = data.login.decode()
        secret = data.password.decode()
        with self.counters.lock:
            self.counters.logins.append((mechanism, user, secret))
        if mechanism == "XOAUTH2" and self.token_check is not None:
            ok = self.token_check(user, secret)
        else:
            table = self.tokens if mechanism == "XOAUTH2" else self.users
            ok = table.get(user) == secret
        return AuthResult(success=ok, handled=False, auth_data=data if ok else None)

    def _register(self, session: _UpstreamSMTP) -> None:
        with self._sessions_lock:
            self._sessions.add(session)

    def _unregister(self, session: _UpstreamSMTP) -> None:
        with self._sessions_lock:
            self._sessions.discard(session)

    def start(self) -> Upstream:
        self._controller.start()
        with self.counters.lock:
            self.counters.sessions_open = 0
            self.counters.sessions_total = 0
            self.counters.sessions_peak = 0
        return self

    def stop(self) -> None:
        self._controller.stop()

    def drop_all(self) -> None:
        """Close every open session from the server side, as a provider does to idle sessions."""
        with self._sessions_lock:
            sessions = list(self._sessions)
        done = threading.Event()

        def close() -> None:
            for session in sessions:
                if session.transport is not None:
                    session.transport.close()
            done.set()

        self._controller.loop.call_soon_threadsafe(close)
        done.wait(5)

    def hold_replies(self) -> None:
        """From now on take each message in, but hold the reply to its final dot until ``release_replies``.

        The message counts as received (a real MTA commits it to its queue
        before it replies) while the sender's request stays in flight: the
        moment a crash test needs to kill a sender mid-send.
        """
        self._in_loop(self._close_gate)

    def release_replies(self) -> None:
        """Send the held replies (to whoever is still connected) and reply at once again."""
        self._in_loop(self._open_gate)

    def _close_gate(self) -> None:
        if self._replies_gate is None:
            self._replies_gate = asyncio.Event()

    def _open_gate(self) -> None:
        gate, self._replies_gate = self._replies_gate, None
        if gate is not None:
            gate.set()

    async def _hold_reply(self, received: Received) -> None:
        gate = self._replies_gate
        if gate is not None:
            self.held.append(received)
            self.held_event.set()
            await gate.wait()

    def hold_noops(self) -> None:
        """From now on leave every NOOP unanswered until ``release_noops`` (a health check in flight)."""

        def close() -> None:
            if self._noops_gate is None:
                self._noops_gate = asyncio.Event()

        self._in_loop(close)

    def release_noops(self) -> None:
        """Answer the held NOOPs (where the session still exists) and answer at once again."""

        def open_gate() -> None:
            gate, self._noops_gate = self._noops_gate, None
            if gate is not None:
                gate.set()

        self._in_loop(open_gate)

    def _in_loop(self, action: Callable[[], None]) -> None:
        """Run ``action`` in the server's loop (asyncio objects are not thread-safe) and wait until it ran."""
        done = threading.Event()

        def run() -> None:
            action()
            done.set()

        self._controller.loop.call_soon_threadsafe(run)
        assert done.wait(5), "the upstream's loop did not answer"

    def wait_messages(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Block until ``count`` messages arrived (condition with a deadline, not a sleep)."""
        import time

        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"expected {count} messages, upstream got {len(self.messages)}")
            self.message_event.clear()
            if len(self.messages) >= count:
                break
            self.message_event.wait(min(remaining, 0.2))
        return list(self.messages)

    @property
    def sessions_open(self) -> int:
        return self.counters.sessions_open

    @property
    def sessions_peak(self) -> int:
        return self.counters.sessions_peak


class StallServer:
    """Accepts TCP (the kernel completes the handshake) and never says a word."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def settings_for(upstream: Upstream, **overrides: Any) -> Any:
    """AccountSettings pointing at a test upstream, trusting the test CA."""
    from mailgate.pool import AccountSettings

    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": upstream.port,
        "tls": upstream.tls,
        "ca_pem": upstream.ca.ca_pem if upstream.ca else None,
        "command_timeout": 5.0,
    }
    if upstream.users and "auth" not in overrides:
        user, password = next(iter(upstream.users.items()))
        values.update(auth="login", username=user, password=password)
    values.update(overrides)
    return AccountSettings(**values)


Factory = Callable[..., Upstream]
