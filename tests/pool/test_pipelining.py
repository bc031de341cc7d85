"""ESMTP PIPELINING upstream (RFC 2920): MAIL, every RCPT and DATA in one write, the replies read in order.

Issue 17. Each command/reply round trip costs the relay an event-loop wakeup,
a write and a read; with PIPELINING offered the envelope costs one of each.
Nothing else may change: the same refusals, phases, resets and reuse as the
step-by-step path. Two kinds of real servers check it: the aiosmtpd test
upstream taught to offer PIPELINING (aiosmtpd reads commands line by line, so
it takes pipelined input as it comes), and a scripted raw server that records
every read and can misbehave where aiosmtpd cannot (a 354 with no recipient,
replies trickling in one segment at a time, silence).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailgate.pool import AccountSettings, Phase, SMTPPool, TLSMode, TransactionError
from mailgate.pool.connection import UpstreamSession, open_connection
from tests.pool.support import MESSAGE, RCPT, SENDER, account_stats, limits
from tests.smtp_servers import Upstream, _Handler, settings_for

pytestmark = pytest.mark.timeout(30)

BAD = "nobody@example.org"
OTHER = "other@example.org"


# -- the aiosmtpd upstream, offering PIPELINING ------------------------------------------------------


class PipeliningHandler(_Handler):
    """The test upstream's handler plus PIPELINING in EHLO, a MAIL reply knob and a look at the read buffer.

    ``lookahead`` holds, for each MAIL, what the server had already received
    past the MAIL line when it handled it: the rest of the envelope when the
    client pipelined, nothing when it waited for the reply.
    """

    def __init__(self, upstream: Upstream, offer: bool) -> None:
        super().__init__(upstream)
        self.offer = offer
        self.mail_reply: str | None = None
        self.lookahead: list[bytes] = []

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if not self.offer:
            return responses
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:
        self.lookahead.append(bytes(server._reader._buffer))  # type: ignore[attr-defined]
        if self.mail_reply is not None:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"


@dataclass
class Piped:
    upstream: Upstream
    handler: PipeliningHandler


def _piped(upstream_factory: Any, offer: bool = True, **kwargs: Any) -> Piped:
    upstream = upstream_factory(**kwargs)
    handler = PipeliningHandler(upstream, offer)
    upstream._controller.handler = handler  # the controller makes each session with the handler it holds now
    return Piped(upstream, handler)


@pytest.fixture
def piped(upstream_factory: Any) -> Piped:
    return _piped(upstream_factory)


def _pipelined(piped: Piped) -> bool:
    """Every MAIL so far arrived with the rest of its envelope already read: the pipelined path ran."""
    return bool(piped.handler.lookahead) and all(ahead.startswith(b"RCPT TO:") for ahead in piped.handler.lookahead)


# -- a scripted raw upstream ---------------------------------------------------------------------------

_HANG_UP = b""  # in a session's outbox: close the connection once what is before it was written


@dataclass
class Script:
    """What the scripted upstream answers; knobs may change between transactions."""

    extensions: tuple[str, ...] = ("PIPELINING", "8BITMIME", "SMTPUTF8", "SIZE 10000000")
    mail_reply: str = "250 2.1.0 OK"
    rcpt_replies: dict[str, str] = field(default_factory=dict)  # by address; any other gets 250
    data_reply: str | None = None  # None: 354 when a recipient was accepted, else 503, as a correct server does
    dot_reply: str = "250 2.0.0 OK queued"
    split: bool = False  # every reply in its own segment, 10 ms apart (else: one write per read, as Postfix does)
    hang_up_at: str | None = None  # the verb at which the server closes without answering
    mute_at: str | None = None  # the verb from which the server answers nothing more (the client times out)


class Scripted:
    """A raw asyncio SMTP server in the test's loop that records every read it makes."""

    def __init__(self) -> None:
        self.script = Script()
        self.reads: list[bytes] = []  # every data_received, all sessions, in order
        self.commands: list[bytes] = []
        self.contents: list[bytes] = []  # the text of each DATA, up to (without) its final dot
        self.sessions: list[_ScriptedSession] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> Scripted:
        self._server = await asyncio.get_running_loop().create_server(lambda: _ScriptedSession(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for session in self.sessions:
            session.close()
        await self._server.wait_closed()
        await asyncio.sleep(0)

    def settings(self, timeout: float = 5.0, **overrides: Any) -> AccountSettings:
        return AccountSettings(host="127.0.0.1", port=self.port, tls=TLSMode.NONE, command_timeout=timeout, **overrides)

    def read_with(self, marker: bytes) -> list[bytes]:
        return [read for read in self.reads if marker in read]


class _ScriptedSession(asyncio.Protocol):
    def __init__(self, server: Scripted) -> None:
        self.server = server
        self.buffer = bytearray()
        self.in_content = False
        self.mail_ok = False
        self.accepted = 0
        self.muted = False
        self.quitting = False
        self.outbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.Transport | None = None
        self.writer: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport subclasses
        self.server.sessions.append(self)
        self.writer = asyncio.get_running_loop().create_task(self._write())
        self.outbox.put_nowait(b"220 scripted ESMTP\r\n")

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.cancel()
        if self.transport is not None:
            self.transport.close()

    async def _write(self) -> None:
        assert self.transport is not None
        while True:
            item = await self.outbox.get()
            if item == _HANG_UP:
                self.transport.close()
                return
            if self.server.script.split:
                await asyncio.sleep(0.01)
            self.transport.write(item)

    def data_received(self, data: bytes) -> None:
        self.server.reads.append(data)
        self.buffer += data
        replies: list[str] = []
        hang_up = False
        while not hang_up and not self.quitting:
            if self.in_content:
                if self.buffer.startswith(b".\r\n"):  # the final dot alone: an empty text
                    end, skip = 0, 3
                else:
                    end, skip = self.buffer.find(b"\r\n.\r\n"), 5
                    if end < 0:
                        break
                self.server.contents.append(bytes(self.buffer[:end]))
                del self.buffer[: end + skip]
                self.in_content = self.mail_ok = False
                replies.append(self.server.script.dot_reply)
                continue
            line_end = self.buffer.find(b"\r\n")
            if line_end < 0:
                break
            line = bytes(self.buffer[:line_end])
            del self.buffer[: line_end + 2]
            self.server.commands.append(line)
            reply = self._answer(line)
            if reply is _HANG_UP:
                hang_up = True
            elif reply is not None:
                replies.append(reply)
        script = self.server.script
        texts = [f"{reply}\r\n".encode() for reply in replies]
        for item in texts if script.split else [b"".join(texts)] if texts else []:
            self.outbox.put_nowait(item)
        if hang_up or self.quitting:
            self.outbox.put_nowait(_HANG_UP)

    def _answer(self, line: bytes) -> Any:
        script = self.server.script
        verb = line.split(b" ", 1)[0].split(b":", 1)[0].upper().decode()
        if verb == script.hang_up_at:
            return _HANG_UP
        if verb == script.mute_at or self.muted:
            self.muted = True
            return None
        if verb == "EHLO":
            return "\r\n".join(f"250-{text}" for text in ("scripted", *script.extensions)) + "\r\n250 HELP"
        if verb == "MAIL":
            self.mail_ok, self.accepted = script.mail_reply.startswith("250"), 0
            return script.mail_reply
        if verb == "RCPT":
            if not self.mail_ok:
                return "503 5.5.1 MAIL first"
            address = line.split(b"<", 1)[1].split(b">", 1)[0].decode()
            reply = script.rcpt_replies.get(address, "250 2.1.5 OK")
            self.accepted += reply.startswith("25")
            return reply
        if verb == "DATA":
            reply = script.data_reply or ("354 go ahead" if self.accepted else "503 5.5.1 No valid recipients")
            self.in_content = reply.startswith("354")
            return reply
        if verb == "RSET":
            self.mail_ok, self.accepted = False, 0
            return "250 2.0.0 OK"
        if verb == "NOOP":
            return "250 2.0.0 OK"
        if verb == "QUIT":
            self.quitting = True
            return "221 2.0.0 Bye"
        return "502 5.5.2 Unknown command"


@pytest.fixture
async def scripted() -> AsyncIterator[Scripted]:
    server = await Scripted().start()
    yield server
    await server.stop()


async def _session(server: Scripted, **overrides: Any) -> UpstreamSession:
    return await open_connection("s", 1, server.settings(**overrides), None)


@pytest.fixture
async def session(scripted: Scripted) -> AsyncIterator[UpstreamSession]:
    opened = await _session(scripted)
    yield opened
    await opened.aclose()


def _sent_text(server: Scripted) -> bytes:
    return b"".join(server.reads)


def _envelope_burst(server: Scripted) -> bytes:
    """The read that held the first MAIL; with pipelining it holds the RCPTs and DATA too."""
    return server.read_with(b"MAIL FROM")[0]


# -- one write for the envelope ------------------------------------------------------------------------


async def test_the_envelope_goes_out_in_one_write_when_pipelining_is_offered(pool: SMTPPool, piped: Piped) -> None:
    pool.configure("a", settings_for(piped.upstream, limits=limits(max_connections=1)))

    for _ in range(2):
        result = await pool.send("a", SENDER, [RCPT, OTHER], MESSAGE)
        assert (result.code, result.accepted, result.refused) == (250, [RCPT, OTHER], {})

    assert len(piped.handler.lookahead) == 2
    for ahead in piped.handler.lookahead:  # read together with MAIL: the rest of the envelope was already there
        assert ahead == f"RCPT TO:<{RCPT}>\r\nRCPT TO:<{OTHER}>\r\nDATA\r\n".encode()
    received = piped.upstream.wait_messages(2)
    assert [m.rcpt_tos for m in received] == [[RCPT, OTHER]] * 2 and received[0].data == MESSAGE
    assert piped.upstream.counters.sessions_total == 1


async def test_without_pipelining_each_command_waits_for_its_reply(pool: SMTPPool, upstream_factory: Any) -> None:
    plain = _piped(upstream_factory, offer=False)
    pool.configure("a", settings_for(plain.upstream, limits=limits(max_connections=1)))

    result = await pool.send("a", SENDER, [RCPT, OTHER], MESSAGE)

    assert result.accepted == [RCPT, OTHER]
    assert plain.handler.lookahead == [b""], "without PIPELINING nothing may be sent before MAIL's reply"


async def test_scripted_server_reads_the_envelope_in_one_segment(scripted: Scripted, session: UpstreamSession) -> None:
    await session.transaction(SENDER, [RCPT, OTHER], MESSAGE)

    [burst] = scripted.read_with(b"MAIL FROM")
    assert burst == (f"MAIL FROM:<{SENDER}> SIZE={len(MESSAGE)}\r\nRCPT TO:<{RCPT}>\r\nRCPT TO:<{OTHER}>\r\nDATA\r\n".encode())
    assert scripted.contents == [MESSAGE.removesuffix(b"\r\n")]


async def test_scripted_server_without_pipelining_gets_one_command_per_read(scripted: Scripted) -> None:
    scripted.script.extensions = ("8BITMIME", "SIZE 10000000")
    session = await _session(scripted)
    try:
        await session.transaction(SENDER, [RCPT], MESSAGE)
    finally:
        await session.aclose()

    assert scripted.read_with(b"MAIL FROM") == [f"MAIL FROM:<{SENDER}> SIZE={len(MESSAGE)}\r\n".encode()]
    assert scripted.read_with(b"RCPT TO") == [f"RCPT TO:<{RCPT}>\r\n".encode()]


@pytest.mark.parametrize("split", [False, True], ids=["replies-in-one-segment", "replies-one-segment-each"])
async def test_replies_are_paired_however_they_arrive(scripted: Scripted, session: UpstreamSession, split: bool) -> None:
    """Postfix answers a pipelined group in one write; others answer line by line: both must pair up."""
    scripted.script.split = split
    scripted.script.rcpt_replies[BAD] = "550 5.1.1 No such user"

    for _ in range(3):
        result = await session.transaction(SENDER, [RCPT, BAD, OTHER], MESSAGE)
        assert (result.accepted, result.refused) == ([RCPT, OTHER], {BAD: (550, "5.1.1 No such user")})

    assert len(scripted.contents) == 3 and len(scripted.sessions) == 1


# -- refusals --------------------------------------------------------------------------------------------


async def test_partly_refused_recipients_are_reported_and_the_rest_delivered(pool: SMTPPool, piped: Piped) -> None:
    piped.upstream.rcpt_replies[BAD] = "550 5.1.1 No such user"
    pool.configure("a", settings_for(piped.upstream, limits=limits(max_connections=1)))

    result = await pool.send("a", SENDER, [BAD, RCPT], MESSAGE)
    again = await pool.send("a", SENDER, [RCPT], MESSAGE)

    assert result.code == 250 and result.accepted == [RCPT]
    assert result.refused == {BAD: (550, "5.1.1 No such user")}
    assert [m.rcpt_tos for m in piped.upstream.wait_messages(2)] == [[RCPT], [RCPT]]
    assert again.connection_reused is True and piped.upstream.counters.sessions_total == 1
    assert piped.handler.lookahead[0].startswith(b"RCPT TO:"), "the test must exercise the pipelined path"


async def test_all_refused_sends_no_text_and_leaves_the_session_usable(pool: SMTPPool, piped: Piped) -> None:
    """aiosmtpd answers the pipelined DATA 503 (no recipient): no text goes out, the session stays."""
    piped.upstream.rcpt_replies[BAD] = "550 5.1.1 No such user"
    piped.upstream.rcpt_replies[OTHER] = "450 4.2.1 Try later"
    pool.configure("a", settings_for(piped.upstream, limits=limits(max_connections=1)))

    with pytest.raises(TransactionError) as failure:
        await pool.send("a", SENDER, [BAD, OTHER], MESSAGE)
    after = await pool.send("a", SENDER, [RCPT], MESSAGE)

    cause = failure.value.cause
    assert isinstance(cause, aiosmtplib.SMTPRecipientsRefused)
    assert [(r.code, r.recipient) for r in cause.recipients] == [(550, BAD), (450, OTHER)]
    assert failure.value.phase is Phase.ENVELOPE and not failure.value.delivery_unknown
    assert not failure.value.session_broken
    assert after.connection_reused is True and piped.upstream.counters.sessions_total == 1
    assert [m.rcpt_tos for m in piped.upstream.wait_messages(1)] == [[RCPT]]
    assert account_stats(pool, "a")["closed"] == {}
    assert _pipelined(piped)


@pytest.mark.parametrize("dot_reply", ["250 2.0.0 OK, nothing", "554 5.5.1 No recipients"])
async def test_a_354_to_data_with_every_recipient_refused_gets_only_the_final_dot(
    scripted: Scripted, session: UpstreamSession, dot_reply: str
) -> None:
    """RFC 2920 3.1: a server may answer DATA 354 anyway; the client then sends the lone "." and nothing else."""
    scripted.script.rcpt_replies = {RCPT: "550 5.1.1 No such user", OTHER: "551 5.1.6 Moved"}
    scripted.script.data_reply = "354 go ahead anyway"
    scripted.script.dot_reply = dot_reply

    with pytest.raises(TransactionError) as failure:
        await session.transaction(SENDER, [RCPT, OTHER], MESSAGE)

    assert isinstance(failure.value.cause, aiosmtplib.SMTPRecipientsRefused)
    assert [(r.code, r.recipient) for r in failure.value.cause.recipients] == [(550, RCPT), (551, OTHER)]
    assert failure.value.phase is Phase.ENVELOPE and not failure.value.delivery_unknown
    assert not failure.value.session_broken
    assert scripted.contents == [b""], "no text may follow the 354: only the final dot"
    assert b"pool test" not in _sent_text(scripted)
    assert scripted.commands[-1] == b"RSET"

    scripted.script = Script()
    result = await session.transaction(SENDER, [RCPT], MESSAGE)
    assert result.code == 250 and scripted.contents[-1] == MESSAGE.removesuffix(b"\r\n")
    assert len(scripted.sessions) == 1


@pytest.mark.parametrize("reply", ["550 5.7.1 Sender refused", "451 4.3.0 Try later"])
async def test_a_refused_mail_is_reported_and_the_session_reused(pool: SMTPPool, piped: Piped, reply: str) -> None:
    """aiosmtpd answers the RCPTs and DATA that followed the refused MAIL with 503: all read, then RSET."""
    piped.handler.mail_reply = reply
    pool.configure("a", settings_for(piped.upstream, limits=limits(max_connections=1)))

    with pytest.raises(TransactionError) as failure:
        await pool.send("a", SENDER, [RCPT, OTHER], MESSAGE)
    piped.handler.mail_reply = None
    after = await pool.send("a", SENDER, [RCPT], MESSAGE)

    cause = failure.value.cause
    assert isinstance(cause, aiosmtplib.SMTPSenderRefused) and cause.code == int(reply[:3])
    assert cause.sender == SENDER
    assert failure.value.phase is Phase.ENVELOPE and not failure.value.session_broken
    assert after.code == 250 and after.connection_reused is True
    assert piped.upstream.counters.sessions_total == 1
    assert [m.rcpt_tos for m in piped.upstream.wait_messages(1)] == [[RCPT]]
    assert _pipelined(piped)


async def test_a_refused_mail_with_a_354_anyway_gets_only_the_final_dot(scripted: Scripted, session: UpstreamSession) -> None:
    scripted.script.mail_reply = "553 5.7.1 Not you"
    scripted.script.data_reply = "354 go ahead anyway"

    with pytest.raises(TransactionError) as failure:
        await session.transaction(SENDER, [RCPT], MESSAGE)

    assert isinstance(failure.value.cause, aiosmtplib.SMTPSenderRefused) and failure.value.cause.code == 553
    assert failure.value.phase is Phase.ENVELOPE
    assert scripted.contents == [b""] and scripted.commands[-1] == b"RSET"
    scripted.script = Script()
    assert (await session.transaction(SENDER, [RCPT], MESSAGE)).code == 250


@pytest.mark.parametrize("reply", ["554 5.5.1 Not now", "451 4.3.0 Try DATA later"])
async def test_a_refused_data_command_leaves_the_session_clean(pool: SMTPPool, piped: Piped, reply: str) -> None:
    piped.upstream.data_command_reply = reply
    pool.configure("a", settings_for(piped.upstream, limits=limits(max_connections=1)))

    with pytest.raises(TransactionError) as failure:
        await pool.send("a", SENDER, [RCPT], MESSAGE)
    piped.upstream.data_command_reply = None
    after = await pool.send("a", SENDER, [RCPT], MESSAGE)

    assert failure.value.phase is Phase.DATA and not failure.value.delivery_unknown
    assert isinstance(failure.value.cause, aiosmtplib.SMTPDataError) and failure.value.cause.code == int(reply[:3])
    assert after.connection_reused is True and piped.upstream.counters.sessions_total == 1
    assert _pipelined(piped)


async def test_421_to_a_recipient_ends_the_session(scripted: Scripted, session: UpstreamSession) -> None:
    scripted.script.rcpt_replies[BAD] = "421 4.3.2 Shutting down"

    with pytest.raises(TransactionError) as failure:
        await session.transaction(SENDER, [RCPT, BAD, OTHER], MESSAGE)

    cause = failure.value.cause
    assert isinstance(cause, aiosmtplib.SMTPRecipientRefused) and cause.code == 421
    assert failure.value.phase is Phase.ENVELOPE and failure.value.session_broken
    assert not session.is_connected()
    assert scripted.contents == []
    assert b"RCPT TO:" in _envelope_burst(scripted)


async def test_a_malformed_reply_mid_group_ends_the_session(scripted: Scripted, session: UpstreamSession) -> None:
    """Where the next reply starts is unknown after garbage: the session must not be RSET and reused."""
    scripted.script.rcpt_replies[BAD] = "what?"

    with pytest.raises(TransactionError) as failure:
        await session.transaction(SENDER, [BAD, RCPT], MESSAGE)

    cause = failure.value.cause
    assert isinstance(cause, aiosmtplib.SMTPResponseException) and cause.code == -1
    assert failure.value.phase is Phase.ENVELOPE and not failure.value.delivery_unknown
    assert not session.is_connected() and b"RSET" not in scripted.commands and scripted.contents == []
    assert b"RCPT TO:" in _envelope_burst(scripted)


# -- drops and silence -----------------------------------------------------------------------------------


async def test_a_drop_before_the_354_is_not_delivery_unknown(pool: SMTPPool, piped: Piped) -> None:
    """MAIL and RCPT were answered, then the server hung up on DATA: nothing can have been delivered."""
    piped.upstream.drop_at_data = True
    pool.configure("a", settings_for(piped.upstream, limits=limits(max_connections=1)))

    conn = await pool.acquire("a")
    with pytest.raises(TransactionError) as failure:
        await conn.transaction(SENDER, [RCPT], MESSAGE)
    await pool.release(conn, discard=failure.value.session_broken)
    piped.upstream.drop_at_data = False
    after = await pool.send("a", SENDER, [RCPT], MESSAGE)

    assert failure.value.phase is Phase.DATA and not failure.value.delivery_unknown
    assert failure.value.session_broken and isinstance(failure.value.cause, aiosmtplib.SMTPServerDisconnected)
    assert after.code == 250 and after.connection_reused is False
    assert len(piped.upstream.wait_messages(1)) == 1
    assert _pipelined(piped)


async def test_a_drop_of_a_reused_session_before_the_354_is_retried_once(pool: SMTPPool, piped: Piped) -> None:
    pool.configure("a", settings_for(piped.upstream, limits=limits(max_connections=1)))
    await pool.send("a", SENDER, [RCPT], MESSAGE)
    piped.upstream.drop_all()  # the idle session dies; the next send finds out mid-envelope

    result = await pool.send("a", SENDER, [RCPT], MESSAGE)

    assert result.attempts == 2 and result.connection_reused is False
    assert len(piped.upstream.wait_messages(2)) == 2
    assert _pipelined(piped)


async def test_a_drop_after_the_final_dot_is_delivery_unknown(pool: SMTPPool, piped: Piped) -> None:
    piped.upstream.drop_after_dot = True
    pool.configure("a", settings_for(piped.upstream, limits=limits(max_connections=1)))

    with pytest.raises(TransactionError) as failure:
        await pool.send("a", SENDER, [RCPT], MESSAGE)
    piped.upstream.drop_after_dot = False
    after = await pool.send("a", SENDER, [RCPT], MESSAGE)

    assert failure.value.phase is Phase.CONTENT and failure.value.delivery_unknown
    assert piped.upstream.counters.sessions_total == 2, "nothing is retried once the text went out"
    assert after.code == 250 and len(piped.upstream.wait_messages(2)) == 2
    assert _pipelined(piped)


@pytest.mark.parametrize(("verb", "phase"), [("RCPT", Phase.ENVELOPE), ("DATA", Phase.DATA)])
async def test_a_hang_up_mid_group_fails_in_its_phase(
    scripted: Scripted, session: UpstreamSession, verb: str, phase: Phase
) -> None:
    scripted.script.hang_up_at = verb

    with pytest.raises(TransactionError) as failure:
        await session.transaction(SENDER, [RCPT], MESSAGE)

    assert failure.value.phase is phase and not failure.value.delivery_unknown and failure.value.session_broken
    assert not session.is_connected() and scripted.contents == []
    assert b"RCPT TO:" in _envelope_burst(scripted)


@pytest.mark.parametrize(("verb", "phase"), [("MAIL", Phase.ENVELOPE), ("DATA", Phase.DATA)])
async def test_silence_mid_group_times_out_in_its_phase(scripted: Scripted, verb: str, phase: Phase) -> None:
    scripted.script.mute_at = verb
    session = await _session(scripted, timeout=1.0)  # the commands before the silent one must fit, on a loaded machine too
    try:
        with pytest.raises(TransactionError) as failure:
            await session.transaction(SENDER, [RCPT], MESSAGE)
    finally:
        await session.aclose()

    assert isinstance(failure.value.cause, TimeoutError)
    assert failure.value.phase is phase and failure.value.session_broken and not failure.value.delivery_unknown
    assert not session.is_connected()
    assert b"RCPT TO:" in _envelope_burst(scripted)


# -- the command lines ---------------------------------------------------------------------------------


async def test_smtputf8_and_8bitmime_lines_are_encoded_as_before(scripted: Scripted, session: UpstreamSession) -> None:
    sender, recipient = "jösé@exämple.org", "zoë@example.org"
    text = "Subject: héllo\r\n\r\nça va\r\n".encode()

    await session.transaction(sender, [recipient], text, mail_options=["BODY=8BITMIME", "SMTPUTF8"])

    [burst] = scripted.read_with(b"MAIL FROM")
    expected = f"MAIL FROM:<{sender}> SIZE={len(text)} BODY=8BITMIME SMTPUTF8\r\nRCPT TO:<{recipient}>\r\nDATA\r\n"
    assert burst == expected.encode("utf-8")


async def test_a_non_ascii_address_without_smtputf8_is_refused_before_anything_is_sent(
    scripted: Scripted, session: UpstreamSession
) -> None:
    with pytest.raises(UnicodeEncodeError):
        await session.transaction("jösé@example.org", [RCPT], MESSAGE)
    assert not scripted.read_with(b"MAIL")
    assert (await session.transaction(SENDER, [RCPT], MESSAGE)).code == 250


async def test_the_null_sender_is_sent_as_empty_brackets(scripted: Scripted, session: UpstreamSession) -> None:
    await session.transaction("", [RCPT], MESSAGE)
    assert scripted.read_with(b"MAIL FROM")[0].startswith(b"MAIL FROM:<> SIZE=")


@pytest.mark.parametrize(
    "address",
    [
        "a@b.example>\r\nRSET",
        "a@b.example\nRCPT TO:<x@y.example>",
        "a@b.example> NOTIFY=NEVER",
        "<a@b.example>",
        "a b@c.example",
        'a"b@c.example',
        "a@b.example\x00",
        "a@b.example\u2028x",
    ],
)
@pytest.mark.parametrize("role", ["sender", "recipient"])
async def test_an_address_that_could_inject_is_refused_before_anything_is_sent(
    scripted: Scripted, session: UpstreamSession, address: str, role: str
) -> None:
    sender, recipients = (address, [RCPT]) if role == "sender" else (SENDER, [RCPT, address])
    with pytest.raises(ValueError):
        await session.transaction(sender, recipients, MESSAGE)
    assert not scripted.read_with(b"MAIL")


async def test_a_quoted_local_part_passes_as_it_did(scripted: Scripted, session: UpstreamSession) -> None:
    quoted = '"john doe"@example.org'
    await session.transaction(SENDER, [quoted], MESSAGE)
    assert f"RCPT TO:<{quoted}>\r\n".encode() in _sent_text(scripted)


async def test_starttls_sessions_pipeline_too(pool: SMTPPool, upstream_factory: Any) -> None:
    secure = _piped(upstream_factory, tls="starttls", users={"user": "secret"})
    secure.upstream.rcpt_replies[BAD] = "550 5.1.1 No such user"
    pool.configure("a", settings_for(secure.upstream, limits=limits(max_connections=1)))

    for _ in range(2):
        result = await pool.send("a", SENDER, [RCPT, BAD], MESSAGE)
        assert (result.accepted, list(result.refused)) == ([RCPT], [BAD])

    assert all(ahead.startswith(b"RCPT TO:") for ahead in secure.handler.lookahead) and len(secure.handler.lookahead) == 2
    assert secure.upstream.counters.sessions_total == 1


# -- pipelined and step-by-step agree ------------------------------------------------------------------

RCPT_REPLIES = ["250 2.1.5 OK", "251 2.1.5 Will forward", "550 5.1.1 No such user", "450 4.2.1 Mailbox busy", "553 5.1.3 Bad"]


def _outcome(result: Any) -> tuple[Any, ...]:
    if isinstance(result, TransactionError):
        cause = result.cause
        if hasattr(cause, "recipients"):
            detail: object = [(r.recipient, r.code, r.message) for r in cause.recipients]
        else:
            assert isinstance(cause, aiosmtplib.SMTPResponseException), cause  # the only causes with a code
            detail = cause.code
        return ("error", result.phase, type(cause).__name__, detail)
    return ("sent", result.accepted, result.refused, result.code)


async def _outcomes(pipelining: bool, replies: list[str], hostile: bool) -> tuple[list[tuple[Any, ...]], list[bytes]]:
    server = await Scripted().start()
    if not pipelining:
        server.script.extensions = ("8BITMIME", "SIZE 10000000")
    recipients = [f"r{index}@example.org" for index in range(len(replies))]
    session = await _session(server)
    outcomes = []
    try:
        for script in (dict(zip(recipients, replies, strict=True)), {}):  # then a clean message on the same session
            server.script.rcpt_replies = script
            server.script.data_reply = "354 go ahead anyway" if hostile and script else None
            try:
                outcomes.append(_outcome(await session.transaction(SENDER, recipients, MESSAGE)))
            except TransactionError as failure:
                outcomes.append(_outcome(failure))
        assert len(server.sessions) == 1
    finally:
        await session.aclose()
        await server.stop()
    return outcomes, server.contents


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(replies=st.lists(st.sampled_from(RCPT_REPLIES), min_size=1, max_size=6), hostile=st.booleans())
def test_pipelined_and_step_by_step_outcomes_agree(replies: list[str], hostile: bool) -> None:
    """Any pattern of recipient verdicts: the same result, the same text delivered, the session still usable.

    ``hostile`` makes the server answer DATA 354 even when it refused every
    recipient; only the pipelined client can see that (the step-by-step one
    never sends DATA then), and must send nothing but the final dot.
    """
    piped, piped_contents = asyncio.run(_outcomes(True, replies, hostile))
    stepped, stepped_contents = asyncio.run(_outcomes(False, replies, hostile))

    assert piped == stepped
    anyone = any(reply.startswith("25") for reply in replies)
    text = MESSAGE.removesuffix(b"\r\n")
    hostile_dot = [b""] if hostile and not anyone else []
    assert piped_contents == ([text] if anyone else hostile_dot) + [text]
    assert stepped_contents == ([text] if anyone else []) + [text]


@pytest.mark.parametrize("tls", ["none", "starttls"])
def test_uvloop_transports_take_the_stand_in_protocol_too(upstream_factory: Any, tls: str) -> None:
    """The gateway runs on uvloop when installed: its transports (plain and TLS) must swap protocols alike."""
    uvloop = pytest.importorskip("uvloop")
    users = {"user": "secret"} if tls == "starttls" else None
    piped = _piped(upstream_factory, tls=tls, users=users)
    piped.upstream.rcpt_replies[BAD] = "550 5.1.1 No such user"

    async def scenario() -> None:
        pool = SMTPPool(close_grace=2.0)
        server = await Scripted().start()
        try:
            pool.configure("a", settings_for(piped.upstream, limits=limits(max_connections=1)))
            for _ in range(2):
                result = await pool.send("a", SENDER, [RCPT, BAD], MESSAGE)
                assert (result.accepted, list(result.refused)) == ([RCPT], [BAD])
            server.script.split = True
            server.script.rcpt_replies = {RCPT: "550 5.1.1 No such user"}
            server.script.data_reply = "354 go ahead anyway"
            session = await _session(server)
            try:
                with pytest.raises(TransactionError):
                    await session.transaction(SENDER, [RCPT], MESSAGE)
                server.script = Script(split=True)
                assert (await session.transaction(SENDER, [RCPT, OTHER], MESSAGE)).accepted == [RCPT, OTHER]
            finally:
                await session.aclose()
            assert server.contents == [b"", MESSAGE.removesuffix(b"\r\n")]
        finally:
            await pool.close_all(grace=2.0)
            await server.stop()

    uvloop.run(scenario())
    assert _pipelined(piped) and len(piped.handler.lookahead) == 2
    assert piped.upstream.counters.sessions_total == 1
