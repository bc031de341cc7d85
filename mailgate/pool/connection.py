"""One pooled upstream session and the questions it can answer about itself.

Following httpcore's model, the pool never inspects another object's
timestamps by hand: a connection says whether it has expired, needs a health
check or is still connected, given the limits in force *now* (limits can be
reconfigured while the connection lives).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

import aiosmtplib
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from aiosmtplib.typing import SMTPStatus

from .errors import AlreadyReleased
from .settings import AccountSettings, AuthMethod, PoolLimits, TLSMode

QUIT_TIMEOUT = 2.0


class CloseReason(str, Enum):
    """Why a connection left the pool; counted in ``stats()`` by value."""

    TTL = "ttl"
    MAX_MESSAGES = "max_messages"
    IDLE = "idle"
    ERROR = "error"
    RECONFIGURE = "reconfigure"
    SHUTDOWN = "shutdown"


class Phase(str, Enum):
    """How far a transaction got when it failed: decides what the caller may be told.

    Before ``CONTENT`` the upstream cannot have the message, so a retry is
    safe. In ``CONTENT`` the message text and its final dot were handed to the
    transport: without a reply to the dot, the upstream may have accepted it.
    """

    ENVELOPE = "envelope"  # MAIL and RCPT
    DATA = "data"  # the DATA command, until its 354
    CONTENT = "content"  # the text and the final dot are written; waiting for the verdict


@dataclass
class TransactionResult:
    """The upstream's verdict on one message."""

    refused: dict[str, tuple[int, str]]
    accepted: list[str]
    code: int
    message: str


class TransactionError(Exception):
    """An upstream failure during a transaction, with the phase it happened in.

    ``SMTPPool.send`` raises this rather than the bare cause, so that the
    relay never has to guess from aiosmtplib's exception tree whether the
    message may already be with the upstream.
    """

    def __init__(self, phase: Phase, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.phase = phase
        self.cause = cause

    @property
    def delivery_unknown(self) -> bool:
        """The final dot went out and no verdict came back: the upstream may have the message.

        A reply to the dot, even a 421, is a verdict (the message was not
        accepted); a drop or a timeout after it is not.
        """
        return self.phase is Phase.CONTENT and not isinstance(self.cause, aiosmtplib.SMTPResponseException)

    @property
    def session_broken(self) -> bool:
        """421, a disconnect or a timeout leave the session unusable; a refusal does not."""
        if isinstance(self.cause, aiosmtplib.SMTPResponseException):
            return self.cause.code == 421
        return not isinstance(self.cause, (aiosmtplib.SMTPRecipientsRefused, aiosmtplib.SMTPNotSupported))


@dataclass(eq=False)
class UpstreamSession:
    """An authenticated aiosmtplib session plus the bookkeeping the pool needs.

    It lives in the pool across many owners; callers only ever hold it
    through a ``PooledConnection``, one per checkout.
    """

    smtp: aiosmtplib.SMTP
    account: str
    generation: int
    created_at: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    messages: int = 0

    def is_connected(self) -> bool:
        return self.smtp.is_connected

    def expiry_reason(self, now: float, limits: PoolLimits) -> CloseReason | None:
        """TTL counts from creation, so a connection that is never idle still expires."""
        if now - self.created_at >= limits.ttl:
            return CloseReason.TTL
        if self.messages >= limits.max_messages_per_connection:
            return CloseReason.MAX_MESSAGES
        return None

    def is_idle_expired(self, now: float, limits: PoolLimits) -> bool:
        return now - self.last_used >= limits.idle_timeout

    def needs_health_check(self, now: float, limits: PoolLimits) -> bool:
        """A NOOP costs a round trip, so only a connection that sat idle a while earns one."""
        return now - self.last_used >= limits.health_check_after_idle

    def is_reused(self) -> bool:
        return self.messages > 0

    def touch(self) -> None:
        self.last_used = time.monotonic()

    async def _is_alive(self) -> bool:
        """NOOP round trip; any failure means the session is unusable."""
        try:
            response = await self.smtp.noop(timeout=min(self.smtp.timeout or 5.0, 5.0))
        except (TimeoutError, aiosmtplib.SMTPException, OSError):
            return False
        return response.code == 250

    async def transaction(
        self,
        sender: str,
        recipients: Sequence[str],
        message: bytes,
        mail_options: Sequence[str] = (),
        rcpt_options: Sequence[str] = (),
    ) -> TransactionResult:
        """MAIL, RCPT, DATA step by step so a failure knows its phase.

        aiosmtplib's ``sendmail`` hides whether DATA had started; a retry on a
        fresh connection is only safe before it did (no duplicate delivery).
        """
        smtp = self.smtp
        self.messages += 1
        options = list(mail_options)
        utf8 = any(option.lower() == "smtputf8" for option in options)
        encoding = "utf-8" if utf8 else "ascii"
        phase = Phase.ENVELOPE
        try:
            await smtp._ehlo_or_helo_if_needed()
            if utf8 and not smtp.supports_extension("smtputf8"):
                raise aiosmtplib.SMTPNotSupported("SMTPUTF8 is not supported by the upstream server")
            eight_bit = any(option.upper() == "BODY=8BITMIME" for option in options)
            if eight_bit and not smtp.supports_extension("8bitmime"):  # never mangle 8-bit data into 7 bits
                raise aiosmtplib.SMTPNotSupported("8BITMIME is not supported by the upstream server")
            if smtp.supports_extension("size"):
                options.insert(0, f"SIZE={len(message)}")
            await smtp.mail(sender, options=options, encoding=encoding)
            refused: dict[str, tuple[int, str]] = {}
            accepted: list[str] = []
            for recipient in recipients:
                try:
                    await smtp.rcpt(recipient, options=list(rcpt_options), encoding=encoding)
                    accepted.append(recipient)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    if exc.code == 421:  # the server is closing the session, not refusing a recipient
                        raise
                    refused[recipient] = (exc.code, exc.message)
            if not accepted:
                await self._reset()
                raise aiosmtplib.SMTPRecipientsRefused(
                    [aiosmtplib.SMTPRecipientRefused(code, text, rcpt) for rcpt, (code, text) in refused.items()]
                )
            phase = Phase.DATA
            start = await smtp.execute_command(b"DATA")
            if start.code != SMTPStatus.start_input:
                raise aiosmtplib.SMTPDataError(start.code, start.message)
            protocol = smtp.protocol
            if protocol is None:
                raise aiosmtplib.SMTPServerDisconnected("Connection lost")
            protocol.write(_data_payload(message))
            phase = Phase.CONTENT
            response = await protocol.read_response(timeout=smtp.timeout)
            if response.code != SMTPStatus.completed:
                raise aiosmtplib.SMTPDataError(response.code, response.message)
        except aiosmtplib.SMTPResponseException as exc:
            if phase is not Phase.CONTENT and exc.code != 421:
                await self._reset()  # a refused MAIL, RCPT or DATA leaves a transaction open: RSET it
            raise TransactionError(phase, exc) from exc
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            if phase is Phase.CONTENT:
                smtp.close()  # as aiosmtplib's data() does: the session is out of step now
            raise TransactionError(phase, exc) from exc
        return TransactionResult(refused, accepted, response.code, response.message)

    async def _reset(self) -> None:
        """RSET so a refused envelope leaves the session reusable; a failing RSET is not an error here."""
        try:
            await self.smtp.rset()
        except (TimeoutError, aiosmtplib.SMTPException, OSError):
            pass

    def abort_socket(self) -> None:
        """Drop the socket now, without QUIT: a command the owner waits on fails at once, with its phase."""
        _abort_transport(self.smtp.transport)

    async def aclose(self) -> None:
        """QUIT politely with a short deadline, then drop the transport whatever happened.

        Once QUIT is answered (or failed) the session is over, so the socket is
        aborted rather than closed: a TLS close_notify exchange would keep it
        open past ``close_all`` and leak it if the event loop ends first.
        """
        transport = self.smtp.transport
        try:
            if self.smtp.is_connected:
                await self.smtp.quit(timeout=QUIT_TIMEOUT)
        except (TimeoutError, aiosmtplib.SMTPException, OSError):
            pass
        finally:
            _abort(self.smtp, transport)
        await asyncio.sleep(0)  # the transport closes its socket on the next loop iteration


class PooledConnection:
    """One checkout of an upstream session: what ``acquire`` hands out and ``release`` takes back.

    The session outlives many owners, so it cannot tell one owner's release
    from the next one's. A handle per checkout can: it has exactly one owner,
    and once released it refuses to be released again or used, so a confused
    caller gets ``AlreadyReleased`` instead of sharing a session with whoever
    owns it now.
    """

    __slots__ = ("_released", "_session")

    def __init__(self, session: UpstreamSession) -> None:
        self._session = session
        self._released = False

    def __repr__(self) -> str:
        state = "released" if self._released else "checked out"
        return f"<PooledConnection {self._session.account} {state}>"

    @property
    def released(self) -> bool:
        return self._released

    @property
    def session(self) -> UpstreamSession:
        """The session, for its owner only."""
        if self._released:
            raise AlreadyReleased(f"this connection to {self._session.account} was released; acquire another")
        return self._session

    def _end(self) -> UpstreamSession:
        """Hand the session back exactly once (``SMTPPool.release``); the handle is dead afterwards."""
        session = self.session
        self._released = True
        return session

    @property
    def account(self) -> str:
        return self._session.account

    @property
    def smtp(self) -> aiosmtplib.SMTP:
        return self.session.smtp

    def is_connected(self) -> bool:
        return self.session.is_connected()

    def is_reused(self) -> bool:
        return self.session.is_reused()

    async def transaction(
        self,
        sender: str,
        recipients: Sequence[str],
        message: bytes,
        mail_options: Sequence[str] = (),
        rcpt_options: Sequence[str] = (),
    ) -> TransactionResult:
        """``UpstreamSession.transaction`` on the session this handle owns."""
        return await self.session.transaction(sender, recipients, message, mail_options, rcpt_options)


async def open_connection(
    account: str,
    generation: int,
    settings: AccountSettings,
    tls_context: ssl.SSLContext | None,
) -> UpstreamSession:
    """Connect, enforce the TLS mode and authenticate; the socket is closed on any failure.

    Authentication runs here rather than inside aiosmtplib's ``connect`` so that a
    rejected login still holds the transport and can abort it (see ``_abort``).
    """
    smtp = aiosmtplib.SMTP(
        hostname=settings.host,
        port=settings.effective_port,
        use_tls=settings.tls is TLSMode.IMPLICIT,
        # True: STARTTLS is required and its absence is an error, never a silent plaintext session.
        start_tls=settings.tls is TLSMode.STARTTLS,
        tls_context=tls_context,
        timeout=settings.command_timeout,
        local_hostname=settings.local_hostname,
    )
    try:
        await smtp.connect()
        await _authenticate(smtp, settings)
    except BaseException:
        _abort(smtp, smtp.transport)
        raise
    return UpstreamSession(smtp=smtp, account=account, generation=generation)


async def _authenticate(smtp: aiosmtplib.SMTP, settings: AccountSettings) -> None:
    """LOGIN lets aiosmtplib pick PLAIN/LOGIN/CRAM-MD5; XOAUTH2 must be offered, never guessed."""
    if settings.auth is AuthMethod.LOGIN:
        assert settings.username is not None and settings.password is not None
        await smtp.login(settings.username, settings.password)
    elif settings.auth is AuthMethod.XOAUTH2:
        assert settings.username is not None
        await smtp._ehlo_or_helo_if_needed()
        if "xoauth2" not in smtp.server_auth_methods:
            raise aiosmtplib.SMTPException("the upstream server does not offer AUTH XOAUTH2")
        source = settings.token_source
        if source is None:
            assert settings.token is not None
            await smtp.auth_xoauth2(settings.username, settings.token)
            return
        token = await source.token(settings.command_timeout)
        try:
            await smtp.auth_xoauth2(settings.username, token)
        except aiosmtplib.SMTPAuthenticationError as error:
            if error.code != 535:
                raise
            # Refused although unexpired (revoked, or permissions changed since it was issued): one new
            # token and one more try, on this session, before any message data; a second 535 stands, and
            # so does this one when no new token can be had (the upstream's answer says more than ours).
            try:
                fresh = await source.renewed(token, settings.command_timeout)
            except Exception as renewal:
                raise error from renewal
            await smtp.auth_xoauth2(settings.username, fresh)


def _data_payload(message: bytes) -> bytes:
    """The text as DATA sends it: CRLF line endings, leading dots doubled, the final dot.

    aiosmtplib's ``data()`` does this too, but sends the DATA command and the
    text in one call, which hides whether the text went out; sending them as
    two steps is what lets a failure report ``Phase.CONTENT``.
    """
    return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message)) + b".\r\n"


def _abort(smtp: aiosmtplib.SMTP, transport: asyncio.BaseTransport | None) -> None:
    """Reset aiosmtplib's state and drop the socket without a TLS shutdown handshake."""
    smtp.close()
    _abort_transport(transport)


def _abort_transport(transport: asyncio.BaseTransport | None) -> None:
    abort = getattr(transport, "abort", None)  # uvloop's transports have it but are not asyncio.WriteTransport
    if abort is not None:
        abort()
