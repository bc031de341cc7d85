"""Hostile header sections through the SMTP ingress: an account's ``senders`` hold for every originator field.

The gateway must check exactly the bytes the upstream receives. Each case
below relayed a forbidden originator before the fix (or relayed a header
section no parser can read confidently); each now gets a 5xx at the end of
DATA and the upstream receives nothing. The property at the end generates
header sections and checks the invariant on what the upstream really got.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from tests.hostile_headers import SENDERS, header_section, matcher, originators_python_finds
from tests.ingress.conftest import IngressGateway, account, in_thread
from tests.ingress.test_sessions import RawClient
from tests.smtp_servers import Upstream

LOGIN = ("shop-app", "shop-pass")


@pytest.fixture
async def gw(ingress_factory, upstream: Upstream) -> IngressGateway:
    gateway = await ingress_factory(trusted_networks="127.0.0.0/8")
    gateway.configure(account(upstream, "shop", senders=SENDERS, clients={LOGIN[0]: LOGIN[1]}))
    return gateway


def text(data: bytes) -> bytes:
    """The message text as sent: ``data`` ended by a CRLF, so that the end marker ``CRLF.CRLF`` can follow."""
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def relay_raw(client: RawClient, data: bytes, *, sender: str = "app@shop.example") -> list[bytes]:
    """One transaction whose text goes on the wire exactly as given (no client-side line-ending repair)."""
    assert client.command(f"MAIL FROM:<{sender}>".encode())[0].startswith(b"250"), "MAIL refused"
    assert client.command(b"RCPT TO:<r@example.net>")[0].startswith(b"250"), "RCPT refused"
    assert client.command(b"DATA")[0].startswith(b"354")
    client.send(text(data) + b".\r\n")
    return client.reply()


def send_trusted(gw: IngressGateway, data: bytes) -> list[bytes]:
    client = RawClient(gw.port)
    try:
        client.command(b"EHLO client.test")
        return relay_raw(client, data)
    finally:
        client.close()


# Each of these reached the upstream with an originator outside the account's senders (or unreadable).
BYPASSES = {
    "bare-lf-before-from": b"Subject: x\nFrom: CEO <ceo@bank.example>\nTo: r@example.net\r\n\r\nbody",
    "lf-only-message": b"From: CEO <ceo@bank.example>\nTo: r@example.net\nSubject: x\n\nbody\n",
    "bare-cr-before-from": b"Subject: x\rFrom: CEO <ceo@bank.example>\r\n\r\nbody",
    "bare-lf-inside-from": b"From: app@shop.example\nFrom: ceo@bank.example\r\n\r\nbody",
    "sender": b"From: app@shop.example\r\nSender: ceo@bank.example\r\n\r\nbody",
    "resent-from": b"From: app@shop.example\r\nResent-From: ceo@bank.example\r\n\r\nbody",
    "resent-sender": b"From: app@shop.example\r\nReSent-SENDER: CEO <ceo@bank.example>\r\n\r\nbody",
    "lf-sender": b"From: app@shop.example\nsender: ceo@bank.example\n\nbody",
}


@pytest.mark.parametrize("data", BYPASSES.values(), ids=BYPASSES.keys())
async def test_a_forbidden_originator_is_refused_whatever_the_line_endings(
    gw: IngressGateway, upstream: Upstream, data: bytes
) -> None:
    reply = await in_thread(send_trusted, gw, data)
    assert reply[0].startswith(b"550 5.7.1 "), reply
    assert b"ceo@bank.example" in reply[0]
    assert upstream.messages == []


# Header sections no reader may interpret differently from the gateway: refused, never guessed.
UNREADABLE = {
    "nul": (b"From: app@shop.example\r\nX-Tag: a\x00b\r\n\r\nbody", b"0x00"),
    "escape": (b"From: app@shop.example\r\nSubject: \x1b[31mred\r\n\r\nbody", b"0x1b"),
    "delete": (b"Subject: \x7f\r\nFrom: app@shop.example\r\n\r\nbody", b"0x7f"),
    "vertical-tab-in-from": (b"From: app@shop.example\x0b\r\n\r\nbody", b"0x0b"),
    "first-line-continues": (b" folded\r\nFrom: app@shop.example\r\n\r\nbody", b"continuation"),
    "garbage-then-from": (b"garbage\r\nFrom: ceo@bank.example\r\n\r\nbody", b"line 1"),
    "field-then-garbage": (b"From: app@shop.example\r\ngarbage\r\nSender: ceo@bank.example\r\n\r\nbody", b"line 2"),
    "encoded-word-domain": (b"From: x@=?utf-8?q?bank.example?=\r\n\r\nbody", b"From"),
    "encoded-word-local-part": (b"From: =?utf-8?q?ceo?=@shop.example\r\n\r\nbody", b"From"),
    "unreadable-list": (b"From: app@shop.example ceo@bank.example\r\n\r\nbody", b"From"),
    "undecodable": (b"From: app\xff@shop.example\r\n\r\nbody", b"UTF-8"),
    "parser-crash": (b"From: app@shop.example\r\nSender: group:; x\r\n\r\nbody", b"Sender"),
    "folded-inside-quotes": (b'From: "x@shop.example,\r\n y" <app@shop.example>\r\n\r\nbody', b"ambiguous"),
    "c1-control": ("From: Jo\u0085rg <app@shop.example>\r\n\r\nbody".encode(), b"U+0085"),
}


@pytest.mark.parametrize(("data", "named"), UNREADABLE.values(), ids=UNREADABLE.keys())
async def test_a_header_section_that_cannot_be_read_confidently_is_refused(
    gw: IngressGateway, upstream: Upstream, data: bytes, named: bytes
) -> None:
    reply = await in_thread(send_trusted, gw, data)
    assert reply[0].startswith(b"550 5.6.0 "), reply
    assert named in reply[0]
    assert upstream.messages == []


# Odd but readable: every originator is checked, and these are all allowed.
ALLOWED = {
    "odd-case": b"fRoM: app@shop.example\r\n\r\nbody",
    "space-before-colon": b"From : app@shop.example\r\nSender\t: b@shop.example\r\n\r\nbody",
    "group": b"From: team: a@shop.example, b@shop.example;\r\n\r\nbody",
    "empty-group": b"From: undisclosed:;\r\nSender: app@shop.example\r\n\r\nbody",
    "folded": b'From: "Shop, Inc." <app@shop.example>,\r\n\tb@shop.example\r\n\r\nbody',
    "comment": b"From: app@shop.example (ceo@bank.example)\r\n\r\nbody",
    "encoded-name": b"From: =?utf-8?q?ceo=40bank.example?= <app@shop.example>\r\n\r\nbody",
    "no-empty-line": b"Subject: x\r\nFrom: app@shop.example\r\n",
    "from-in-body": b"From: app@shop.example\r\n\r\nFrom: ceo@bank.example\r\n",
    "no-header-at-all": b"just a line\r\nand another: with a colon later\r\n\r\nFrom: ceo@bank.example\r\n",
    "lf-only-allowed": b"From: app@shop.example\nSubject: lf\n\nbody\n",
    "utf8-name": "From: Jörg <app@shop.example>\r\n\r\nbody".encode(),
}


@pytest.mark.parametrize("data", ALLOWED.values(), ids=ALLOWED.keys())
async def test_odd_but_allowed_header_sections_are_relayed_with_crlf(gw: IngressGateway, upstream: Upstream, data: bytes) -> None:
    reply = await in_thread(send_trusted, gw, data)
    assert reply[0].startswith(b"250 2.0.0 "), reply
    [message] = upstream.messages
    relayed = message.data.split(b"\r\n", 3)[3]  # after the three lines of the Received header
    assert relayed == text(data).replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


async def test_a_logged_in_client_cannot_spoof_from_with_bare_line_feeds(gw: IngressGateway, upstream: Upstream) -> None:
    """The report's case: STARTTLS, AUTH, then a header section with bare LFs (smtplib would repair them, so
    the text is written to the socket directly)."""

    def go() -> tuple[int, bytes]:
        with gw.smtp(login=LOGIN) as client:
            client.mail("app@shop.example")
            client.rcpt("r@example.net")
            assert client.docmd("DATA")[0] == 354
            client.send(text(BYPASSES["bare-lf-before-from"]) + b".\r\n")
            return client.getreply()

    code, reply = await in_thread(go)
    assert (code, reply[:6]) == (550, b"5.7.1 "), reply
    assert upstream.messages == []


async def test_a_bare_lf_dot_line_cannot_end_the_message_upstream(gw: IngressGateway, upstream: Upstream) -> None:
    """``LF . CRLF`` is not the end of DATA here (only ``CRLF . CRLF`` is); once normalised to a ``CRLF . CRLF``
    inside the text it goes upstream dot-stuffed, so no second message can be smuggled behind it."""
    smuggled = b"From: app@shop.example\r\n\r\nbody\n.\r\nMAIL FROM:<ceo@bank.example>\r\nRCPT TO:<r@example.net>\r\n"
    reply = await in_thread(send_trusted, gw, smuggled)
    assert reply[0].startswith(b"250 2.0.0 "), reply
    [message] = upstream.messages
    assert message.mail_from == "app@shop.example"
    assert message.data.split(b"\r\n\r\n", 1)[1] == b"body\r\n.\r\nMAIL FROM:<ceo@bank.example>\r\nRCPT TO:<r@example.net>\r\n"


# --------------------------------------------------------------------------- the property, end to end


async def test_property_relayed_means_every_originator_python_finds_is_allowed(gw: IngressGateway, upstream: Upstream) -> None:
    senders = matcher()
    outcomes: dict[bytes, int] = {}

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(data=header_section())
    def check(data: bytes) -> None:
        before = len(upstream.messages)
        reply = send_trusted(gw, data)
        code = reply[0][:3]
        outcomes[code] = outcomes.get(code, 0) + 1
        assert code in (b"250", b"550"), reply
        if code != b"250":
            assert len(upstream.messages) == before
            return
        received = upstream.messages[-1].data
        assert [a for a in originators_python_finds(received) if not senders.allows(a)] == [], (data, received)

    await in_thread(check)
    assert outcomes.get(b"250") and outcomes.get(b"550"), outcomes  # both sides of the property were exercised


# --------------------------------------------------------------------------- control characters in MAIL and RCPT

CONTROLS = [b"\x01", b"\x00", b"\x1b", b"\x7f", b"\t"]


@pytest.mark.parametrize("control", CONTROLS, ids=[f"0x{c[0]:02x}" for c in CONTROLS])
async def test_a_control_character_in_a_quoted_recipient_is_refused_at_rcpt(
    gw: IngressGateway, upstream: Upstream, control: bytes
) -> None:
    def go() -> tuple[list[bytes], list[bytes]]:
        client = RawClient(gw.port)
        try:
            client.command(b"EHLO client.test")
            assert client.command(b"MAIL FROM:<app@shop.example>")[0].startswith(b"250")
            refused = client.command(b'RCPT TO:<"x' + control + b'y"@example.org>')
            assert client.command(b"RCPT TO:<r@example.net>")[0].startswith(b"250")
            assert client.command(b"DATA")[0].startswith(b"354")
            return refused, client.command(b"From: app@shop.example\r\n\r\nbody\r\n.")
        finally:
            client.close()

    refused, relayed = await in_thread(go)
    assert refused[0].startswith(b"553 5.1.3 "), refused
    assert relayed[0].startswith(b"250 2.0.0 "), relayed  # the transaction and the upstream session go on
    assert [m.rcpt_tos for m in upstream.messages] == [["r@example.net"]]


@pytest.mark.parametrize("control", CONTROLS, ids=[f"0x{c[0]:02x}" for c in CONTROLS])
async def test_a_control_character_in_a_quoted_sender_is_refused_at_mail(
    gw: IngressGateway, upstream: Upstream, control: bytes
) -> None:
    def go() -> tuple[list[bytes], list[bytes]]:
        client = RawClient(gw.port)
        try:
            client.command(b"EHLO client.test")
            refused = client.command(b'MAIL FROM:<"x' + control + b'y"@shop.example>')
            return refused, client.command(b"RCPT TO:<r@example.net>")
        finally:
            client.close()

    refused, rcpt = await in_thread(go)
    assert refused[0].startswith(b"553 5.1.7 "), refused
    assert rcpt[0].startswith(b"503 "), rcpt  # no transaction was opened
    assert upstream.messages == []


async def test_a_quoted_local_part_with_a_space_still_works(gw: IngressGateway, upstream: Upstream) -> None:
    def go() -> list[list[bytes]]:
        client = RawClient(gw.port)
        try:
            client.command(b"EHLO client.test")
            return [
                client.command(b'MAIL FROM:<"app here"@shop.example>'),
                client.command(b'RCPT TO:<"john doe"@example.org>'),
                client.command(b"DATA"),
                client.command(b"From: app@shop.example\r\n\r\nbody\r\n."),
            ]
        finally:
            client.close()

    replies = await in_thread(go)
    assert [r[0][:3] for r in replies] == [b"250", b"250", b"354", b"250"], replies
    [message] = upstream.messages
    assert (message.mail_from, message.rcpt_tos) == ('"app here"@shop.example', ['"john doe"@example.org'])
