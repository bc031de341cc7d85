"""One pooled upstream session and the questions it can answer about itself.

Following httpcore's model, the pool never inspects another object's
timestamps by hand: a connection says whether it has expired, needs a health
check or is still connected, given the limits in force *now* (limits can be
reconfigured while the connection lives).
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

import aiosmtplib
from aiosmtplib.protocol import (
    COMMAND_INJECTION_REGEX,
    MAX_LINE_LENGTH,
    MAX_RESPONSE_LENGTH,
    PERIOD_REGEX,
    SMTPProtocol,
    normalize_message_line_endings,
)
from aiosmtplib.typing import SMTPStatus

from .errors import AlreadyReleased
from .settings import AccountSettings, AuthMethod, PoolLimits, TLSMode

QUIT_TIMEOUT = 2.0

# What MAIL and RCPT may carry between < and >: aiosmtplib's rule (no white space, angle bracket or quote
# outside a leading quoted local part, no control character anywhere), as one anchored match. The empty
# path is the null sender.
_PATH_RE = re.compile(r'(?:"(?:[^"\\\x00-\x1f\x7f]|\\[^\x00-\x1f\x7f])*")?[^\s<>"\x00-\x1f\x7f]*\Z')


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
        """MAIL, RCPT, DATA, each failure with its phase; pipelined (RFC 2920) when the upstream offers it.

        aiosmtplib's ``sendmail`` hides whether DATA had started; a retry on a
        fresh connection is only safe before it did (no duplicate delivery).
        With PIPELINING the envelope and DATA go out in one write and their
        replies are read in order: one round trip instead of two plus one per
        recipient, with the same verdicts as the step-by-step exchange.
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
            mail = b"MAIL FROM:" + _path(sender, encoding) + _parameters(options)
            rcpt_tail = _parameters(rcpt_options)
            rcpts = [b"RCPT TO:" + _path(recipient, encoding) + rcpt_tail for recipient in recipients]
            refused: dict[str, tuple[int, str]] = {}
            accepted: list[str] = []
            if smtp.supports_extension("pipelining"):
                replies = _PipelinedReplies.install(smtp)
                try:
                    replies.send(b"\r\n".join([mail, *rcpts, b"DATA", b""]))
                    mail_reply = await replies.next()
                    if mail_reply.code == SMTPStatus.domain_unavailable:  # closing: the other replies may never come
                        raise aiosmtplib.SMTPSenderRefused(mail_reply.code, mail_reply.message, sender)
                    for recipient in recipients:
                        _sort_recipient(recipient, await replies.next(), accepted, refused)
                    phase = Phase.DATA
                    start = await replies.next()
                finally:
                    replies.uninstall()
                if mail_reply.code != SMTPStatus.completed or not accepted:
                    phase = Phase.ENVELOPE  # nothing could be delivered: the envelope's verdict is the answer
                    if start.code == SMTPStatus.start_input:
                        await self._end_empty_text()
                    elif start.code == SMTPStatus.domain_unavailable:
                        smtp.close()
                    if mail_reply.code != SMTPStatus.completed:
                        raise aiosmtplib.SMTPSenderRefused(mail_reply.code, mail_reply.message, sender)
            else:
                mail_reply = await smtp.execute_command(mail)
                if mail_reply.code != SMTPStatus.completed:
                    raise aiosmtplib.SMTPSenderRefused(mail_reply.code, mail_reply.message, sender)
                for recipient, rcpt in zip(recipients, rcpts, strict=True):
                    _sort_recipient(recipient, await smtp.execute_command(rcpt), accepted, refused)
                if accepted:
                    phase = Phase.DATA
                    start = await smtp.execute_command(b"DATA")
            if not accepted:
                await self._reset()
                raise aiosmtplib.SMTPRecipientsRefused(
                    [aiosmtplib.SMTPRecipientRefused(code, text, rcpt) for rcpt, (code, text) in refused.items()]
                )
            if start.code != SMTPStatus.start_input:
                raise aiosmtplib.SMTPDataError(start.code, start.message)
            protocol = _protocol(smtp)
            protocol.write(_data_payload(message))
            phase = Phase.CONTENT
            response = await protocol.read_response(timeout=smtp.timeout)
            if response.code != SMTPStatus.completed:
                raise aiosmtplib.SMTPDataError(response.code, response.message)
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code == SMTPStatus.domain_unavailable:
                smtp.close()  # the server is closing the session (execute_command closes too; a pipelined reply does not)
            elif phase is not Phase.CONTENT:
                await self._reset()  # a refused MAIL, RCPT or DATA leaves a transaction open: RSET it
            raise TransactionError(phase, exc) from exc
        except (aiosmtplib.SMTPRecipientsRefused, aiosmtplib.SMTPNotSupported) as exc:
            raise TransactionError(phase, exc) from exc
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            smtp.close()  # a lost or late reply leaves the session out of step (as aiosmtplib's commands do)
            raise TransactionError(phase, exc) from exc
        return TransactionResult(refused, accepted, response.code, response.message)

    async def _end_empty_text(self) -> None:
        """DATA got its 354 although nothing may be sent: the final dot alone ends it (RFC 2920 3.1).

        Only a pipelining client meets this (a server that answers 354 with no
        recipient, or after refusing MAIL). No recipient was accepted, so
        whatever the server answers to the empty text, nothing was delivered;
        a lost or late answer only costs the session.
        """
        smtp = self.smtp
        try:
            protocol = _protocol(smtp)
            protocol.write(b".\r\n")
            reply = await protocol.read_response(timeout=smtp.timeout)
        except (TimeoutError, aiosmtplib.SMTPException, OSError):
            smtp.close()
            return
        if reply.code == SMTPStatus.domain_unavailable:
            smtp.close()

    async def _reset(self) -> None:
        """RSET so a refused envelope leaves the session reusable; a failing RSET is not an error here."""
        if not self.smtp.is_connected:  # closed by a 421 or a lost reply: nothing to reset
            return
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


def _path(address: str, encoding: str) -> bytes:
    """``<address>`` for MAIL or RCPT, refusing (ValueError, nothing sent) what could end the path or the line.

    Addresses reach the pool in wire form: ``relay/envelope.py`` normalises
    the HTTP door's, the SMTP door's path parser yields bare addr-specs. So
    aiosmtplib's ``quote_address`` (an ``email.utils.parseaddr`` per command,
    an eighth of the relay's CPU) only re-parsed them; this keeps its
    injection checks and its encoding (UTF-8 with SMTPUTF8, else ASCII, whose
    UnicodeEncodeError is a ValueError too), and refuses rather than repairs
    what ``parseaddr`` would have rewritten (a display name, a bracketed
    address, a comment): no caller sends those.
    """
    if _PATH_RE.match(address) is None:
        raise ValueError(f"address {address!r} cannot be sent in an SMTP path")
    return b"<" + address.encode(encoding) + b">"


def _parameters(options: Sequence[str]) -> bytes:
    """ESMTP parameters as aiosmtplib sends them: ASCII, each after a space, no control character."""
    if not options:
        return b""
    tail = b"".join(b" " + option.encode("ascii") for option in options)
    if COMMAND_INJECTION_REGEX.search(tail):
        raise ValueError("an ESMTP parameter holds a control character")
    return tail


def _sort_recipient(
    recipient: str, reply: aiosmtplib.SMTPResponse, accepted: list[str], refused: dict[str, tuple[int, str]]
) -> None:
    """File one RCPT reply; a 421 is the server closing the session, not refusing a recipient: it raises."""
    if reply.code in (SMTPStatus.completed, SMTPStatus.will_forward):
        accepted.append(recipient)
    elif reply.code == SMTPStatus.domain_unavailable:
        raise aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, recipient)
    else:
        refused[recipient] = (reply.code, reply.message)


def _protocol(smtp: aiosmtplib.SMTP) -> SMTPProtocol:
    protocol = smtp.protocol
    if protocol is None:
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    return protocol


class _PipelinedReplies(asyncio.Protocol):
    """Stands in for aiosmtplib's protocol on the transport while the replies to a pipelined group arrive.

    aiosmtplib's ``read_response`` pairs one reply with one command written
    just before: a second reply that came in the same read stays in its
    buffer unparsed (the next ``read_response`` waits for data that already
    came), and data arriving while a parsed reply awaits pickup is dropped as
    unsolicited. Both happen with pipelining, so for the group the transport
    talks to this protocol (``set_protocol``, public asyncio API) which
    queues every reply in order, then aiosmtplib's takes over again.
    Connection loss and flow control are passed on to aiosmtplib's protocol
    so that its state (and the ``SMTP`` object's) stays true.
    """

    def __init__(self, protocol: SMTPProtocol, transport: asyncio.BaseTransport, timeout: float | None) -> None:
        self._protocol = protocol
        self._transport = transport
        self._timeout = timeout
        self._buffer = bytearray()
        self._replies: deque[aiosmtplib.SMTPResponse] = deque()
        self._failure: aiosmtplib.SMTPException | None = None
        self._waiter: asyncio.Future[None] | None = None

    @classmethod
    def install(cls, smtp: aiosmtplib.SMTP) -> _PipelinedReplies:
        protocol = _protocol(smtp)
        transport = protocol.transport
        if transport is None or transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        replies = cls(protocol, transport, smtp.timeout)
        transport.set_protocol(replies)
        return replies

    def uninstall(self) -> None:
        if self._transport.get_protocol() is self:
            self._transport.set_protocol(self._protocol)

    def send(self, commands: bytes) -> None:
        self._protocol.write(commands)

    async def next(self) -> aiosmtplib.SMTPResponse:
        """The next reply in order, waiting at most the command timeout for it; raises once the session failed."""
        if not self._replies and self._failure is None:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(self._timeout):
                    await self._waiter
            except TimeoutError as exc:
                raise aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response") from exc
            finally:
                self._waiter = None
        if self._replies:
            return self._replies.popleft()
        assert self._failure is not None
        raise self._failure

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            self._parse()
        except aiosmtplib.SMTPResponseException as exc:  # garbage: where the next reply starts is unknown
            self._fail(exc)
            self._transport.close()  # so the session is not connected when the caller would RSET it
        else:
            if self._replies:
                self._wake()

    def eof_received(self) -> bool:
        self._fail(aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"))
        return False  # close the transport, as aiosmtplib's protocol does

    def connection_lost(self, exc: Exception | None) -> None:
        failure = aiosmtplib.SMTPServerDisconnected("Connection lost")
        failure.__cause__ = exc
        self._fail(failure)
        self._protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        self._protocol.pause_writing()

    def resume_writing(self) -> None:
        self._protocol.resume_writing()

    def _fail(self, failure: aiosmtplib.SMTPException) -> None:
        if self._failure is None:
            self._failure = failure
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _parse(self) -> None:
        """Move every complete reply from the buffer to the queue, with aiosmtplib's parsing rules and limits."""
        buffer = self._buffer
        offset = consumed = 0
        lines: list[bytes] = []
        while (end := buffer.find(b"\n", offset)) >= 0:
            line = bytes(buffer[offset : end + 1])
            offset = end + 1
            if len(line) > MAX_LINE_LENGTH:
                raise aiosmtplib.SMTPResponseException(SMTPStatus.invalid_response.value, "Response too long")
            try:
                code = int(line[:3])
            except ValueError:
                text = line.decode("utf-8", errors="ignore")
                raise aiosmtplib.SMTPResponseException(
                    SMTPStatus.invalid_response.value, f"Malformed SMTP response line: {text}"
                ) from None
            lines.append(line[4:].strip(b" \t\r\n"))
            if line[3:4] != b"-":
                self._replies.append(aiosmtplib.SMTPResponse(code, b"\n".join(lines).decode("utf-8", "surrogateescape")))
                lines = []
                consumed = offset
        del buffer[:consumed]
        if len(buffer) > MAX_RESPONSE_LENGTH:
            raise aiosmtplib.SMTPResponseException(SMTPStatus.invalid_response.value, "Response too long")


def _data_payload(message: bytes) -> bytes:
    """The text as DATA sends it: CRLF line endings, leading dots doubled, the final dot.

    aiosmtplib's ``data()`` does this too, but sends the DATA command and the
    text in one call, which hides whether the text went out; sending them as
    two steps is what lets a failure report ``Phase.CONTENT``. Both passes are
    skipped when a message needs neither (what both doors hand over: CRLF
    already, no line starting with a dot): counting is a scan without a copy.
    """
    crlf = message.count(b"\r\n")
    if crlf != message.count(b"\n") or crlf != message.count(b"\r") or not message.endswith(b"\r\n"):
        message = normalize_message_line_endings(message)
    if message.startswith(b".") or b"\n." in message:
        message = PERIOD_REGEX.sub(b"..", message)
    return message + b".\r\n"


def _abort(smtp: aiosmtplib.SMTP, transport: asyncio.BaseTransport | None) -> None:
    """Reset aiosmtplib's state and drop the socket without a TLS shutdown handshake."""
    smtp.close()
    _abort_transport(transport)


def _abort_transport(transport: asyncio.BaseTransport | None) -> None:
    abort = getattr(transport, "abort", None)  # uvloop's transports have it but are not asyncio.WriteTransport
    if abort is not None:
        abort()
