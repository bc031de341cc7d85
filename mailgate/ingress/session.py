"""One SMTP session of the ingress: aiosmtpd's protocol plus the gateway's policy.

aiosmtpd parses the protocol (commands, PIPELINING, STARTTLS, AUTH
exchanges); this module decides everything else, per transaction:

- who may send: a client that logged in (AUTH, only over TLS unless plaintext
  AUTH is allowed for trusted networks), or any client from a trusted network;
  anyone else gets ``530`` at MAIL;
- which account: ``routing.Router`` at MAIL, so a sender no account may use,
  an account that is suspended or a declared SIZE over the account's limit is
  refused before the client sends the message; and again once the message is
  in, so that it is sent under the configuration in force at that moment;
- relaying: at the end of DATA the message goes through the relay core (the
  HTTP API's limits, checks and pool) and the client hears the upstream's
  verdict, mapped by ``replies``. The session's idle timer is paused meanwhile:
  the wait is the gateway's, not the client's. An account this gateway holds
  no connection share of is sent by a peer that holds one (``Relay.deliver``),
  and the client hears that peer's verdict the same way.

Some of aiosmtpd's routines are replaced for speed, with the same behaviour,
after profiling: the address parsing of MAIL and RCPT (a fast path for plain
addresses), the reading of the message text (large reads, not one per line),
and what every connection pays for, since most apps send one message per
connection: the session's setup (its tables are built once, not per
connection), EHLO (one write, not one per line), STARTTLS (the event loop's
TLS) and the idle timer (moved, not replaced, by each command).

A session also knows whether it is idle, in a command, or inside a
transaction, so that a shutdown can say ``421`` to idle clients at once and
let a transaction in progress finish with a definitive answer first. Its
last words (``421`` at a timeout or a shutdown) never wait for the client to
read them (``hang_up``): a client that pipelines commands and never reads
blocks its session in a write, and only an abort ends that.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import ssl
from base64 import b64decode
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, AnyStr, NamedTuple, cast

import aiosmtpd.smtp
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, Session, TLSSetupException, login_always_fail, syntax

from ..logs import request_id_var
from ..queue import QueueError
from ..relay.accounts import Account
from ..relay.core import Relay, rerouted
from ..relay.envelope import MessageError, OutgoingMessage
from ..relay.identity import Identity
from ..relay.outbox import Outbox
from ..relay.outcomes import Outcome, Reason, Refused
from ..relay.routing import NoRoute, Router
from ..spec import DeliveryMode
from . import replies
from .clients import ClientAuthenticator
from .envelope import protocol_name, received_header, transaction_id, transaction_message
from .options import IngressOptions

log = logging.getLogger("mailgate.ingress")

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_sanitized_log = aiosmtpd.smtp.sanitized_log


def _sanitized_log_if_written(func: Callable[..., None], msg: AnyStr, *args: Any, **kwargs: Any) -> None:
    """aiosmtpd's ``sanitized_log``, skipped when ``func``'s logger would drop the record anyway.

    aiosmtpd's command loop calls it twice per command line (at DEBUG and at
    INFO, its ``mail.log`` logger, which the ingress keeps at ERROR), and it
    runs the AUTH-hiding regex over the line before the logger looks at the
    level: 5 % of the CPU of a STARTTLS + AUTH connection with one message.
    """
    logger, level = getattr(func, "__self__", None), _LEVELS.get(getattr(func, "__name__", ""))
    if isinstance(logger, logging.Logger) and level is not None and not logger.isEnabledFor(level):
        return
    _sanitized_log(func, msg, *args, **kwargs)


aiosmtpd.smtp.sanitized_log = _sanitized_log_if_written  # looked up as a module global by SMTP._handle_client

_NON_ASCII = "\u0080-\ud7ff\ue000-\U0010ffff"  # UTF-8 (SMTPUTF8), not the surrogates of undecodable bytes
_ATOM = rf"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~\-{_NON_ASCII}]+"
_LABEL = rf"[A-Za-z0-9{_NON_ASCII}](?:[A-Za-z0-9\-{_NON_ASCII}]*[A-Za-z0-9{_NON_ASCII}])?"
# <dot-atom@domain>: what nearly every client sends in MAIL and RCPT, recognised without the email package.
_PLAIN_PATH = re.compile(rf"<({_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})*)>")

DEFAULT_SIZE = 26214400  # advertised when no account is configured yet (the spec's default limit)
AUTH_ATTEMPTS = 5  # per session; then 421 and the connection closes
# How long a connection being closed may take to deliver its last reply before it is aborted: a client
# that does not read would otherwise keep it (its slot, its buffers, a shutdown) forever.
LINGER = 5.0
# C0, DEL and C1 controls, and the surrogate escapes of undecodable bytes: never valid in a MAIL or RCPT path.
_PATH_UNUSABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
MAIL_LINE_LIMIT = 512 + 26 + 10  # room for SIZE= (RFC 1870) and SMTPUTF8 (RFC 6531)
TRUST_CACHE = 4096  # peer addresses whose trust is remembered; the options cannot change, so entries never go stale
_CALL_LIMITS = {"AUTH": AUTH_ATTEMPTS, "*": 1_000_000}  # aiosmtpd's command_call_limit: AUTH attempts per session


@dataclass(frozen=True, slots=True)
class ClientLogin:
    """Who logged in: kept as the session's ``auth_data`` (no password)."""

    username: str
    account: str


@dataclass(slots=True)
class Transaction:
    """A transaction MAIL opened; its id names the message in Received, the reply and the logs."""

    id: str


@dataclass
class IngressContext:
    """What every session shares: options, routing, client logins, the relay core."""

    options: IngressOptions
    router: Router
    authenticator: ClientAuthenticator
    relay: Relay
    max_size: Callable[[], int]  # what EHLO advertises: the largest account limit
    outbox: Outbox | None = None  # durable delivery, for accounts with delivery.mode queue

    _trusted: dict[str, bool] = field(default_factory=dict, init=False, repr=False)  # peer address: trusted?

    def is_trusted(self, ip: str) -> bool:
        """Whether a peer is in a trusted network; remembered per address (a cluster's clients are few)."""
        known = self._trusted.get(ip)
        if known is None:
            if len(self._trusted) >= TRUST_CACHE:
                self._trusted.clear()
            known = self._trusted[ip] = self._in_trusted_network(ip)
        return known

    def _in_trusted_network(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.options.trusted_networks)


class IngressSMTP(SMTP):
    """aiosmtpd's session with the ingress's policy; ``Handler`` holds the per-command hooks."""

    def __init__(
        self,
        context: IngressContext,
        handler: Handler,
        *,
        tls_context: ssl.SSLContext | None,
        implicit_tls: bool,
        on_open: Callable[[IngressSMTP], None],
        on_close: Callable[[IngressSMTP], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """What ``SMTP.__init__`` sets up, without its introspection.

        aiosmtpd's constructor rebuilds its command, hook and AUTH tables for
        every connection (``inspect.getmembers``, ``dir``, ``inspect.signature``
        over the session and the handler): a quarter of the ingress's CPU time
        per connection when profiled. Those tables depend only on the class and
        the shared handler, so they are built once (``_COMMANDS``,
        ``_MECHANISMS``, ``Handler.hooks``); this sets every attribute aiosmtpd's
        constructor sets, to the values the arguments below would give it
        (``tests/ingress/test_per_connection.py`` checks that none is missing).
        """
        options = context.options
        asyncio.StreamReaderProtocol.__init__(
            self,
            asyncio.StreamReader(limit=self.line_length_limit, loop=loop),
            client_connected_cb=self._cb_client_connected,
            loop=loop,
        )
        self.__ident__ = "mailgate"
        self.loop = loop
        self.event_handler = handler
        self.data_size_limit = None  # set per transaction from the account (see Handler.handle_MAIL)
        self.enable_SMTPUTF8 = options.smtputf8
        self._decode_data = False
        # aiosmtpd keeps these limits in a dict shared by every instance of the class; each session has its own.
        self.command_size_limits = _SizeLimits(MAIL=MAIL_LINE_LIMIT)
        self.hostname = options.hostname
        self.tls_context = None if implicit_tls else tls_context
        self.require_starttls = False
        self._timeout_duration = options.command_timeout
        self._timeout_handle = None
        self._deadline = 0.0  # loop time when the client will have been silent too long (see _reset_timeout)
        self._tls_handshake_okay = True
        self._tls_protocol = None
        self._original_transport = None
        self.session = None
        self.envelope = None
        self.transport = None
        self._handler_coroutine = None
        self._auth_require_tls = False  # enforced in smtp_AUTH, which also knows implicit TLS and trusted networks
        self._proxy_timeout = None
        self._authenticator = None
        self._auth_callback = login_always_fail  # unused: auth_PLAIN and auth_LOGIN check through the context
        self._auth_required = False
        self._auth_methods = _MECHANISMS  # type: ignore[assignment]  # same fields as aiosmtpd's private _AuthMechAttr
        self._handle_hooks = handler.hooks
        self._ehlo_hook_ver = None  # smtp_EHLO below answers EHLO itself
        self._smtp_methods = _Commands(self)  # type: ignore[assignment]  # a Mapping: aiosmtpd only reads it
        self._enforce_call_limit = True
        self._call_limit_base = _CALL_LIMITS  # copied into each session's budget when it starts: never written
        self._call_limit_default = _CALL_LIMITS["*"]
        self.context = context
        self.implicit_tls = implicit_tls
        self._tls_started = False  # STARTTLS done
        self.trusted = False
        self.peer_ip = "unknown"
        self.transaction: Transaction | None = None
        self.closing = False
        self._busy = False
        self._linger: asyncio.TimerHandle | None = None  # aborts a connection whose close does not finish
        self._on_open = on_open
        self._on_close = on_close

    # -- state the server asks about -------------------------------------------

    @property
    def tls_active(self) -> bool:
        return self.implicit_tls or self._tls_started

    @property
    def idle(self) -> bool:
        """Between transactions and not inside a command: a 421 now loses nothing."""
        return not self._busy and self.transaction is None

    def login(self) -> ClientLogin | None:
        data = self.session.auth_data if self.session is not None and self.session.authenticated else None
        return data if isinstance(data, ClientLogin) else None

    def may_auth(self) -> bool:
        return self.tls_active or (self.context.options.allow_plaintext_auth and self.trusted)

    # -- lifecycle ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # also after STARTTLS, with a fresh Session (RFC 3207: forget everything)
        self._on_open(self)
        peer = transport.get_extra_info("peername")
        self.peer_ip = str(peer[0]) if peer else "unknown"
        self.trusted = self.context.is_trusted(self.peer_ip)

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        if self._linger is not None:
            self._linger.cancel()
        self._on_close(self)

    def _set_post_data_state(self) -> None:
        """After DATA, RSET, HELO/EHLO and STARTTLS: the transaction is over."""
        super()._set_post_data_state()
        self.transaction = None
        self.data_size_limit = None

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd's idle deadline, moved without a new timer per command.

        aiosmtpd cancels its timer and makes a new one for every command. Here
        a command only moves the deadline; the one timer, when it fires early,
        sets itself again for what is left (``_timer_fired``). Only a shorter
        deadline than the timer's (the command timeout after DATA's) or a
        paused timer takes a new one.
        """
        self._deadline = self.loop.time() + (duration or self._timeout_duration)
        handle = self._timeout_handle
        if handle is None or handle.cancelled() or handle.when() > self._deadline:
            if handle is not None:
                handle.cancel()
            self._timeout_handle = self.loop.call_at(self._deadline, self._timer_fired)

    def pause_timeout(self) -> None:
        """No deadline until the next ``_reset_timeout``: the client waits for the gateway now, not the other way round."""
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()

    def _timer_fired(self) -> None:
        if self.loop.time() < self._deadline:
            self._timeout_handle = self.loop.call_at(self._deadline, self._timer_fired)
            return
        self._timeout_cb()

    def _timeout_cb(self) -> None:
        """The client said nothing for the whole command (or DATA) timeout: drop it.

        A client that merely stalled is told why first (RFC 5321 4.2.2 allows
        ``421`` at any time). One that has not even read the replies already
        waiting for it (it pipelined commands and never reads) is aborted at
        once: its session is stuck writing, and a polite close would wait
        for a flush that never comes, keeping the session's slot, its buffers
        and any shutdown waiting for it.
        """
        transport = cast(asyncio.Transport | None, self.transport)
        if transport is None:
            return
        if transport.is_closing() or transport.get_write_buffer_size() > 0:
            log.info("SMTP client %s did not read its replies within the timeout; connection aborted", self.peer_ip)
            self.abort()
            return
        log.info("SMTP client %s timed out", self.peer_ip)
        self.hang_up(f"421 4.4.2 {self.hostname} Error: timeout exceeded")

    def goodbye(self) -> None:
        """``421`` and close: the client knows nothing more will be accepted on this connection."""
        self.hang_up(f"421 4.3.2 {self.hostname} Service shutting down, try again later")

    def hang_up(self, last_reply: str) -> None:
        """Write a last reply and close, without waiting for the client to read it.

        Never awaits a flush: a client that does not read must not hold up the
        caller (a shutdown goes through every session). The close lets a
        reading client get the reply; one that still has not taken it after
        ``LINGER`` seconds is aborted.
        """
        transport = cast(asyncio.Transport | None, self.transport)
        if transport is None or transport.is_closing():
            return
        transport.write(last_reply.encode("utf-8" if self.enable_SMTPUTF8 else "ascii") + b"\r\n")
        transport.close()
        self._linger = self.loop.call_later(LINGER, self.abort)

    def abort(self) -> None:
        """Drop the connection now, unsent replies and all; ``connection_lost`` follows on the next loop turn."""
        if self.transport is not None:
            cast(asyncio.Transport, self.transport).abort()

    # -- commands with policy -------------------------------------------------------

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:
        """aiosmtpd's EHLO answered in one write, not one per line (a system call each, and a TLS record each
        after STARTTLS: the most of any command, and every app says EHLO twice per connection)."""
        if not hostname:
            await self.push("501 Syntax: EHLO hostname")
            return
        self._set_rset_state()
        assert self.session is not None
        self.session.extended_smtp = True
        self.session.host_name = hostname
        await self.push("\r\n".join(self._extensions()))

    def _extensions(self) -> list[str]:
        """The EHLO reply: what this session may use; AUTH only where it is allowed (over TLS, or trusted plaintext)."""
        login = self.login()
        account = self.context.router.accounts.get(login.account) if login is not None else None
        size = account.config.spec.max_message_bytes if account is not None else self.context.max_size()
        lines = [f"250-{self.hostname}", f"250-SIZE {size}", "250-8BITMIME", "250-PIPELINING"]
        if self.enable_SMTPUTF8:
            lines.append("250-SMTPUTF8")
        if self.tls_context is not None and not self.tls_active:
            lines.append("250-STARTTLS")
        if self.may_auth() and not (self.session is not None and self.session.authenticated):
            lines.append("250-AUTH LOGIN PLAIN")
        lines.append("250 HELP")
        return lines

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        """STARTTLS through asyncio's public ``StreamWriter.start_tls`` rather than aiosmtpd's own layering.

        aiosmtpd puts asyncio's TLS protocol, written in Python, under the
        session by hand; ``start_tls`` lets the event loop do it with its own
        (uvloop's is compiled): the same handshake, less work per record.
        RFC 3207 4.2 as before: what the client sent before the handshake is
        dropped, and the session starts over (no EHLO, login or transaction).
        """
        if arg:
            await self.push("501 Syntax: STARTTLS")
            return
        if self.tls_context is None:
            await self.push("454 TLS not available")
            return
        if self.tls_active:
            await self.push("503 5.5.1 TLS already active")
            return
        # Nothing sent in clear after STARTTLS may count as a command (CVE-2011-0411): stop reading, drop what was
        # read. After the handshake the buffer may already hold the client's first command over TLS: keep that.
        cast(asyncio.ReadTransport, self.transport).pause_reading()  # start_tls resumes it under TLS
        self._reader._buffer.clear()  # type: ignore[attr-defined]  # as aiosmtpd does: there is no public way
        await self.push("220 Ready to start TLS")
        try:
            await self._writer.start_tls(self.tls_context)
        except OSError as error:  # ssl.SSLError, a reset, a handshake timeout
            raise TLSSetupException() from error
        transport = self._writer.transport
        self._tls_started = True
        self.transport = transport
        self._reader._transport = transport  # type: ignore[attr-defined]  # its flow control goes through TLS now
        self._set_rset_state()
        self.session = self._create_session()
        self.session.peer = transport.get_extra_info("peername")
        self.session.ssl = {name: transport.get_extra_info(name) for name in ("cipher", "peercert", "compression")}
        self._reset_timeout()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd parses every MAIL and RCPT path with the email package's header parser (a sixth of
        the ingress's CPU time when profiled); a plain ``<local@domain>`` gets the same answer from a regex."""
        match = _PLAIN_PATH.match(arg)
        if match is not None:
            return match.group(1), arg[match.end() :].lstrip()
        return super()._getaddr(arg)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, reading the message text in a few large reads instead of one per line.

        The protocol is the same (503 and 501 checks, 354, dot-unstuffing,
        552 only after the whole text arrived); aiosmtpd's per-line loop was an
        eighth of the ingress's CPU time when profiled. One difference: lines
        longer than 1000 octets are passed on, and the upstream decides.
        """
        if await self.check_helo_needed():
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        self._reset_timeout(self.context.options.data_timeout)  # the message text gets its own, longer deadline
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        limit = self.data_size_limit or DEFAULT_SIZE
        text = await self._read_text(limit)
        if text is None:
            self._set_post_data_state()
            await self.push(f"552 5.3.4 Message exceeds the account's size limit ({limit} bytes)")
            return
        self.envelope.original_content = self.envelope.content = text
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    async def _read_text(self, limit: int) -> bytes | None:
        """The text up to the lone ``.`` line, dot-unstuffed; ``None`` when it is over ``limit`` (all of it is read).

        Reads up to each ``.CRLF`` and checks whether it ends a ``CRLF.CRLF``.
        The stream's line limit (1001 octets, for commands) is lifted meanwhile;
        a text beyond ``limit`` is read and dropped piece by piece, never held.
        """
        reader = self._reader
        saved = reader._limit  # type: ignore[attr-defined]  # asyncio's StreamReader keeps it private
        reader._limit = max(saved, limit + 1024)  # type: ignore[attr-defined]
        parts: list[bytes] = []
        total, tail, too_big = 0, b"", False
        try:
            while not (total == 3 and tail == b".\r\n") and not tail.endswith(b"\r\n.\r\n"):
                try:
                    piece = await reader.readuntil(b".\r\n")
                except asyncio.LimitOverrunError as exc:
                    piece = await reader.readexactly(exc.consumed)  # cannot contain the end: drop it
                    too_big = True
                except asyncio.IncompleteReadError:
                    if self.transport is not None:
                        self.transport.close()
                    raise asyncio.CancelledError() from None  # as aiosmtpd ends a session whose client left
                total += len(piece)
                tail = (tail + piece)[-5:]
                if not too_big:
                    parts.append(piece)
        finally:
            reader._limit = saved  # type: ignore[attr-defined]
        if too_big or total - 3 > limit:
            return None
        text = b"".join(parts)[:-3]
        if text.startswith(b"."):
            text = text[1:]
        return text.replace(b"\r\n.", b"\r\n")

    async def smtp_AUTH(self, arg: str) -> None:
        if not self.may_auth():
            await self.push("538 5.7.11 Encryption required for requested authentication mechanism")
            return
        await super().smtp_AUTH(arg)

    async def auth_PLAIN(self, _: SMTP, args: list[str]) -> AuthResult:
        """RFC 4616: ``authzid NUL authcid NUL password``, inline or after an empty challenge."""
        if len(args) == 1:
            blob = await self.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            try:
                blob = b64decode(args[1].encode(), validate=True)
            except ValueError:
                await self.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        assert isinstance(blob, bytes)
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await self.push("501 5.5.2 Can't split auth value")
            return AuthResult(success=False, handled=True)
        return await self._check(parts[1], parts[2])

    async def auth_LOGIN(self, _: SMTP, args: list[str]) -> AuthResult:
        if len(args) == 1:
            username = await self.challenge_auth(self.AuthLoginUsernameChallenge)
            if username is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            try:
                username = b64decode(args[1].encode(), validate=True)
            except ValueError:
                await self.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        password = await self.challenge_auth(self.AuthLoginPasswordChallenge)
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        assert isinstance(username, bytes) and isinstance(password, bytes)
        return await self._check(username, password)

    async def _check(self, username_bytes: bytes, password_bytes: bytes) -> AuthResult:
        try:
            username, password = username_bytes.decode("utf-8"), password_bytes.decode("utf-8")
        except UnicodeDecodeError:
            return AuthResult(success=False, handled=False)
        account = await self.context.authenticator.authenticate(username, password)
        if account is None:
            log.info("SMTP AUTH failed for %r from %s", username, self.peer_ip)
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, handled=False, auth_data=ClientLogin(username, account))


class _SizeLimits(dict[str, int]):
    """Line length limits by command (aiosmtpd's ``command_size_limits``): MAIL's is longer, every other is 512."""

    def __missing__(self, command: str) -> int:
        return SMTP.command_size_limit


class _Command:
    """One command of one session, run with the session marked busy; quacks like the method for aiosmtpd's HELP."""

    __slots__ = ("method", "session")

    def __init__(self, session: IngressSMTP, method: Callable[[str | None], Awaitable[None]]) -> None:
        self.session = session
        self.method = method

    def __getattr__(self, name: str) -> object:
        return getattr(self.method, name)  # __smtp_syntax__ and friends, read by HELP

    async def __call__(self, arg: str | None) -> None:
        session = self.session
        session._busy = True
        try:
            await self.method(arg)
        finally:
            session._busy = False
        if session.closing and session.transaction is None:
            session.goodbye()


class _Commands(Mapping[str, _Command]):
    """aiosmtpd's command table for one session (``get`` per command line, ``items`` for HELP), bound on use
    instead of every method being bound and wrapped when the session starts."""

    __slots__ = ("session",)

    def __init__(self, session: IngressSMTP) -> None:
        self.session = session

    def __getitem__(self, name: str) -> _Command:
        if name not in _COMMANDS:
            raise KeyError(name)
        return _Command(self.session, getattr(self.session, f"smtp_{name}"))

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(_COMMANDS))

    def __len__(self) -> int:
        return len(_COMMANDS)


class _Mechanism(NamedTuple):
    """An entry of aiosmtpd's AUTH table, which calls ``method(server, args)``."""

    method: Callable[[SMTP, list[str]], Awaitable[AuthResult]]
    is_builtin: bool


def _mechanism(name: str) -> _Mechanism:
    async def call(server: SMTP, args: list[str]) -> AuthResult:
        return cast(AuthResult, await getattr(server, name)(server, args))

    return _Mechanism(call, True)


_COMMANDS = frozenset(name.removeprefix("smtp_") for name in dir(IngressSMTP) if name.startswith("smtp_"))
_MECHANISMS = {
    name.removeprefix("auth_").replace("__", "-"): _mechanism(name) for name in dir(IngressSMTP) if name.startswith("auth_")
}


class Handler:
    """aiosmtpd hooks shared by all sessions; per-session state lives on the ``IngressSMTP``."""

    def __init__(self, context: IngressContext) -> None:
        self.context = context
        # aiosmtpd's ``_handle_hooks``, built once here instead of by every session (see ``IngressSMTP.__init__``)
        self.hooks: dict[str, Callable[..., Awaitable[object]]] = {
            name.removeprefix("handle_"): getattr(self, name) for name in dir(self) if name.startswith("handle_")
        }

    def _account_for(self, server: IngressSMTP, sender: str) -> Account | replies.Reply:
        """Route and admit (known, not suspended) with the configuration in force right now."""
        login = server.login()
        decision = self.context.router.route(sender, client_account=login.account if login else None)
        if isinstance(decision, NoRoute):
            log.info("SMTP sender %s refused: %s", sender, decision.detail)
            return replies.for_no_route(decision)
        # The client may use the account it routed to (its login's, or any for a trusted network): ``admit``
        # still checks that the account exists here and is not suspended.
        name = f"smtp:{login.username}" if login else f"smtp:[{server.peer_ip}]"
        identity = Identity.for_accounts(name, (decision.account.key,))
        admitted = self.context.relay.admit(identity, decision.account.key)
        return admitted if isinstance(admitted, Account) else replies.for_outcome(admitted, "-")

    async def handle_MAIL(
        self, server: IngressSMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        """Refuse early what would be refused anyway, before the client sends the message."""
        if server.login() is None and not server.trusted:
            return "530 5.7.0 Authentication required"
        unusable = _unusable_address(address)
        if unusable is not None:
            return f"553 5.1.7 The sender address {unusable}"
        if not envelope.smtp_utf8 and not address.isascii():
            return "553 5.6.7 A non-ASCII address needs the SMTPUTF8 parameter"
        account = self._account_for(server, address)
        if isinstance(account, replies.Reply):
            return str(account)
        limit = account.config.spec.max_message_bytes
        declared = _declared_size(options)
        if declared is not None and declared > limit:
            return f"552 5.3.4 Message size exceeds the limit of account {account.key} ({limit} bytes)"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        server.data_size_limit = limit
        server.transaction = Transaction(transaction_id())
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: IngressSMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= self.context.options.max_recipients:
            return f"452 4.5.3 Too many recipients (at most {self.context.options.max_recipients} per message)"
        unusable = _unusable_address(address)
        if unusable is not None:
            return f"553 5.1.3 The recipient address {unusable}"
        if not envelope.smtp_utf8 and not address.isascii():
            return "553 5.6.7 A non-ASCII address needs the SMTPUTF8 parameter"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: IngressSMTP, session: Session, envelope: Envelope) -> str:
        """Relay, then answer with the upstream's verdict.

        The account is chosen again here, not kept from MAIL: a client may take
        minutes between the two, and a message is sent under the configuration
        in force when it is sent (an account removed or re-routed meanwhile
        does not fail it).
        """
        transaction = server.transaction
        assert transaction is not None and envelope.mail_from is not None
        login = server.login()
        smtputf8 = bool(envelope.smtp_utf8)
        protocol = protocol_name(
            extended=session.extended_smtp, tls=server.tls_active, authenticated=login is not None, smtputf8=smtputf8
        )
        received = received_header(
            helo=session.host_name or "",
            peer_ip=server.peer_ip,
            hostname=server.hostname,
            protocol=protocol,
            message_id=transaction.id,
        )
        try:
            message = transaction_message(
                sender=envelope.mail_from,
                recipients=envelope.rcpt_tos,
                data=envelope.original_content or b"",
                received=received,
                smtputf8=smtputf8,
                fallback_id=transaction.id,
            )
        except MessageError as exc:  # a header section the gateway cannot check as the upstream would read it
            where = "" if exc.field == "body" else exc.field.removeprefix("headers.") + ": "
            answer = replies.reply(550, "5.6.0", f"header section refused: {where}{exc.detail}")
            self.context.relay.record(login.account if login is not None else "-", "invalid-request")
            log.info("SMTP message %s from %s refused: %s", transaction.id, envelope.mail_from, answer.lines[0])
            return str(answer)
        server.pause_timeout()
        token = request_id_var.set(transaction.id)
        try:
            answer, via = await self._relay(server, message, transaction.id)
        finally:
            request_id_var.reset(token)
            server._reset_timeout()
        log.info(
            "SMTP message %s from %s via %s to %d recipient(s): %s %s",
            transaction.id,
            envelope.mail_from,
            via,
            len(envelope.rcpt_tos),
            answer.code,
            answer.status,
        )
        return str(answer)

    async def _relay(self, server: IngressSMTP, message: OutgoingMessage, transaction_id: str) -> tuple[replies.Reply, str]:
        """Send (or queue) through the account routing picks now, routed again if it is removed first (``rerouted``)."""
        chosen = "-"

        def pick() -> Account | replies.Reply:
            nonlocal chosen
            chosen = "-"
            return self._account_for(server, message.sender)

        async def send(account: Account) -> Outcome | replies.Reply:
            nonlocal chosen
            chosen = account.key
            if account.config.spec.delivery.mode is DeliveryMode.queue:
                return await self._enqueue(account, message, transaction_id)
            return await self.context.relay.deliver(account, message)

        def removed(result: Outcome | replies.Reply) -> bool:
            return isinstance(result, Refused) and result.reason is Reason.UNKNOWN_ACCOUNT

        result = await rerouted(pick, send, removed)
        if isinstance(result, replies.Reply):
            return result, chosen
        return replies.for_outcome(result, transaction_id), chosen

    async def _enqueue(self, account: Account, message: OutgoingMessage, transaction_id: str) -> replies.Reply:
        """250 only once the message is stored durably; what can be refused now is refused now, as a send would be."""
        relay, outbox = self.context.relay, self.context.outbox
        if outbox is None:
            relay.record(account.key, "queue-unavailable")
            return replies.reply(451, "4.3.0", f"account {account.key} queues its messages, but this gateway has no queue")
        refusal = relay.check_message(account, message)
        if refusal is not None:
            relay.record(account.key, refusal.reason.value)
            return replies.for_outcome(refusal, transaction_id)
        try:
            queue_id = await outbox.enqueue(account, message)
        except QueueError as exc:
            log.warning("could not queue SMTP message %s for %s: %s", transaction_id, account.key, type(exc).__name__)
            relay.record(account.key, "queue-unavailable")
            return replies.reply(451, "4.3.0", "the message queue cannot store the message; nothing was kept, try again later")
        relay.record(account.key, "queued")
        return replies.reply(250, "2.0.0", f"OK {transaction_id} queued as {queue_id}")

    async def handle_exception(self, error: Exception) -> str:
        """A bug must not leak its text to the client, nor be acknowledged: 451, and the traceback in the log."""
        log.error("SMTP ingress session failed", exc_info=error)
        return "451 4.3.0 Internal error, try again later"


def _unusable_address(address: str) -> str | None:
    """Why a MAIL or RCPT path cannot be relayed, or ``None``.

    RFC 5321 allows no control character in a path, not even quoted (its
    quoted strings hold printable characters only), and the upstream
    client refuses to send one: caught only at DATA, it failed the message
    with a 451 forever. Undecodable bytes (kept as surrogate escapes) cannot
    be encoded for the upstream either.
    """
    bad = _PATH_UNUSABLE.search(address)
    if bad is None:
        return None
    char = bad.group()
    if "\ud800" <= char <= "\udfff":
        return "is not valid UTF-8"
    return f"holds the control character U+{ord(char):04X}"


def _declared_size(options: list[str]) -> int | None:
    for option in options:
        name, _, value = option.partition("=")
        if name.upper() == "SIZE" and value.isdigit():
            return int(value)
    return None
