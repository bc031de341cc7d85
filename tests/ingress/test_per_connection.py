"""The per-connection path, made cheaper than aiosmtpd's own: sessions set up without its introspection, EHLO in
one write, STARTTLS through the event loop's TLS, one idle timer per session. Each must behave as before."""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import ssl
import time

import pytest
from aiosmtpd.smtp import SMTP

from mailgate.ingress.session import AUTH_ATTEMPTS, IngressSMTP
from tests.ingress.conftest import HOST, IngressFactory, IngressGateway, TLSFiles, account, in_thread
from tests.ingress.test_sessions import RawClient
from tests.smtp_servers import Upstream


async def test_a_session_has_every_attribute_aiosmtpds_constructor_sets(gw: IngressGateway) -> None:
    loop = asyncio.get_running_loop()
    options, tls = gw.ingress.options, gw.ingress.certificate.context() if gw.ingress.certificate else None
    session = IngressSMTP(
        gw.ingress.context, gw.ingress.handler, tls_context=tls, implicit_tls=False,
        on_open=lambda _: None, on_close=lambda _: None, loop=loop,
    )
    reference = IngressSMTP.__new__(IngressSMTP)
    SMTP.__init__(
        reference, gw.ingress.handler, data_size_limit=None, enable_SMTPUTF8=options.smtputf8, decode_data=False,
        hostname=options.hostname, ident="mailgate", tls_context=tls, timeout=options.command_timeout,
        auth_require_tls=False, command_call_limit={"AUTH": AUTH_ATTEMPTS, "*": 1_000_000}, loop=loop,
    )
    assert set(vars(reference)) <= set(vars(session))
    tables = ("_auth_methods", "_handle_hooks", "_smtp_methods", "command_size_limits", "_stream_reader_wr", "_loop")
    for name in set(vars(reference)) - set(tables):
        value = getattr(reference, name)
        if isinstance(value, str | int | float | bool | dict | type(None) | type(tls)):
            assert getattr(session, name) == value or (name == "require_starttls" and not value), name
    for name in ("_auth_methods", "_handle_hooks", "_smtp_methods"):
        assert sorted(getattr(session, name)) == sorted(getattr(reference, name)), name


async def test_help_lists_the_commands_and_their_syntax(gw: IngressGateway) -> None:
    def go() -> tuple[list[bytes], list[bytes]]:
        client = RawClient(gw.port)
        try:
            return client.command(b"HELP"), client.command(b"HELP MAIL")
        finally:
            client.close()

    listing, mail = await in_thread(go)
    assert listing == [b"250 Supported commands: DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET STARTTLS VRFY"]
    assert mail == [b"250 Syntax: MAIL FROM: <address>"]


async def test_ehlo_answers_in_one_reply_before_and_after_starttls(gw: IngressGateway, upstream: Upstream) -> None:
    gw.configure(account(upstream, "shop", senders=["*@shop.example"], clients={"app": "pw"}))

    def go() -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
        with gw.smtp(starttls=False) as client:
            plain = dict(client.esmtp_features)
            client.starttls(context=gw.tls.client_context())
            client.ehlo()
            tls = dict(client.esmtp_features)
            client.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0app\0pw").decode())
            client.ehlo()
            return plain, tls, dict(client.esmtp_features)

    plain, tls, logged_in = await in_thread(go)
    assert plain == {"size": "26214400", "8bitmime": "", "pipelining": "", "smtputf8": "", "starttls": "", "help": ""}
    assert tls == {"size": "26214400", "8bitmime": "", "pipelining": "", "smtputf8": "", "auth": " LOGIN PLAIN", "help": ""}
    assert "auth" not in logged_in and logged_in["size"] == "26214400"


async def test_a_command_sent_in_clear_after_starttls_is_never_run(gw: IngressGateway) -> None:
    """CVE-2011-0411: what a client (or someone in the path) pipelines after STARTTLS, before the handshake, is dropped."""

    def go() -> tuple[bytes, bytes]:
        with socket.create_connection((HOST, gw.port), timeout=10) as raw:
            with raw.makefile("rb") as clear:
                clear.readline()
                raw.sendall(b"EHLO client.test\r\n")
                while clear.readline()[3:4] == b"-":
                    pass
                raw.sendall(b"STARTTLS\r\nHELP\r\n")  # one segment: HELP reaches the gateway before the handshake
                ready = clear.readline()
            with gw.tls.client_context().wrap_socket(raw, server_hostname=HOST) as tls, tls.makefile("rb") as lines:
                tls.sendall(b"NOOP\r\n")
                return ready, lines.readline()

    ready, first = await in_thread(go)
    assert ready.startswith(b"220 ")
    assert first == b"250 OK\r\n"  # the answer to NOOP, not to the injected HELP


async def test_a_client_that_keeps_talking_outlives_the_command_timeout(ingress_factory: IngressFactory) -> None:
    # Two seconds: a pause of 0.3 s stays far inside it however slow the machine, and 2.4 s in all still outlast it.
    gw = await ingress_factory(command_timeout=2.0)

    def talk() -> list[list[bytes]]:
        client = RawClient(gw.port)
        try:
            replies = []
            for _ in range(8):  # 2.4 s in all, never 2 s silent
                time.sleep(0.3)
                replies.append(client.command(b"NOOP"))
            return replies
        finally:
            client.close()

    assert await in_thread(talk) == [[b"250 OK"]] * 8


async def test_after_a_message_the_command_timeout_applies_again(ingress_factory: IngressFactory, upstream: Upstream) -> None:
    """DATA has a longer deadline, which a slow message may use; after the message (here refused as too large),
    the next command brings the shorter one back, and a client silent after it is dropped at that one."""
    # 1.5 s between commands: the back-to-back commands below never come near it on a loaded machine.
    gw = await ingress_factory(trusted_networks="127.0.0.0/8", command_timeout=1.5, data_timeout=60.0)
    gw.configure(account(upstream, "shop", senders=["*@shop.example"], maxMessageBytes=1024))

    def send_then_stall() -> list[bytes]:
        client = RawClient(gw.port)  # its socket gives up after 10 s: far less than the DATA timeout
        try:
            client.command(b"EHLO staller.test")
            client.command(b"MAIL FROM:<app@shop.example>")
            client.command(b"RCPT TO:<ops@example.org>")
            client.command(b"DATA")
            client.send(b"Subject: big\r\n\r\n" + b"x" * 2048)
            time.sleep(2.0)  # slower than the command timeout: only DATA's own deadline applies meanwhile
            assert client.command(b"\r\n.")[0].startswith(b"552 ")
            assert client.command(b"NOOP") == [b"250 OK"]
            return client.reply() + client.reply()
        finally:
            client.close()

    assert await in_thread(send_then_stall) == [b"421 4.4.2 gw.test.example Error: timeout exceeded", b"<closed>"]


async def test_ehlo_advertises_the_largest_limit_of_the_configuration_in_force(gw: IngressGateway, upstream: Upstream) -> None:
    def size() -> str:
        with gw.smtp(starttls=False) as client:
            return client.esmtp_features["size"]

    gw.configure(account(upstream, "a", senders=["*@a.example"], maxMessageBytes=4096))
    assert await in_thread(size) == "4096"
    gw.configure(account(upstream, "a", senders=["*@a.example"], maxMessageBytes=4096),
                 account(upstream, "b", senders=["*@b.example"], maxMessageBytes=8192))
    assert await in_thread(size) == "8192"
    gw.configure()
    assert await in_thread(size) == "26214400"  # no account: the spec's default


async def test_starttls_inside_tls_is_refused_and_the_session_goes_on(gw: IngressGateway) -> None:
    def go() -> tuple[tuple[int, bytes], tuple[int, bytes]]:
        with gw.smtp() as client:
            return client.docmd("STARTTLS"), client.noop()

    assert await in_thread(go) == ((503, b"5.5.1 TLS already active"), (250, b"OK"))


async def test_a_tls_session_hands_out_one_ticket_and_resumes_with_it(gw: IngressGateway, tls_files: TLSFiles) -> None:
    """TLS 1.3 servers send two session tickets by default, each encrypted and written on every handshake;
    a client resumes with one, so the ingress sends one (``num_tickets``), and resumption still works."""
    tickets = 0

    def count_tickets(conn: object, direction: str, version: object, content_type: object, msg_type: object, data: bytes) -> None:
        nonlocal tickets
        if direction == "read" and msg_type == ssl._TLSMessageType.NEWSESSION_TICKET:  # type: ignore[attr-defined]
            tickets += 1

    client = ssl.create_default_context(cafile=str(tls_files.ca))
    client.minimum_version = ssl.TLSVersion.TLSv1_3
    client._msg_callback = count_tickets  # type: ignore[attr-defined]

    def starttls_session(session: ssl.SSLSession | None) -> tuple[ssl.SSLSession | None, bool | None]:
        with socket.create_connection((HOST, gw.port), timeout=10) as raw:
            reader = raw.makefile("rb")
            reader.readline()
            raw.sendall(b"EHLO client.example\r\n")
            while reader.readline()[3:4] == b"-":
                pass
            raw.sendall(b"STARTTLS\r\n")
            assert reader.readline().startswith(b"220")
            with client.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
                tls.sendall(b"NOOP\r\n")
                assert tls.recv(1024).startswith(b"250")  # the tickets arrive before this reply
                return tls.session, tls.session_reused

    first, reused = await in_thread(starttls_session, None)
    assert tickets == 1 and not reused
    _, reused = await in_thread(starttls_session, first)
    assert reused and tickets == 2


async def test_command_lines_are_not_sanitized_for_log_lines_nobody_writes(
    gw: IngressGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiosmtpd hides AUTH data in every command line it logs (a regex per line, twice), whatever the log level;
    the ingress keeps its log at ERROR, so that work is skipped, and done as before once someone turns it up."""
    import aiosmtpd.smtp

    calls = 0
    original = aiosmtpd.smtp.sanitize

    def counting(text: bytes) -> bytes:
        nonlocal calls
        calls += 1
        return original(text)

    monkeypatch.setattr(aiosmtpd.smtp, "sanitize", counting)

    def noop_session() -> None:
        with socket.create_connection((HOST, gw.port), timeout=10) as raw:
            reader = raw.makefile("rb")
            reader.readline()
            raw.sendall(b"NOOP\r\nQUIT\r\n")
            assert reader.readline().startswith(b"250") and reader.readline().startswith(b"221")

    await in_thread(noop_session)
    assert calls == 0
    logger = logging.getLogger("mail.log")
    monkeypatch.setattr(logger, "level", logging.INFO)
    logger.manager._clear_cache()  # type: ignore[attr-defined]
    await in_thread(noop_session)
    assert calls >= 2
    logger.manager._clear_cache()  # type: ignore[attr-defined]
