"""The message text as SMTP frames it: dot-stuffing, the end marker, pipelining, clients that leave mid-text."""

from __future__ import annotations

import pytest

from tests.ingress.conftest import IngressGateway, account, in_thread
from tests.ingress.test_sessions import RawClient
from tests.smtp_servers import Upstream


@pytest.fixture
def trusted(ingress_factory, upstream: Upstream):
    async def make() -> IngressGateway:
        gw = await ingress_factory(trusted_networks="127.0.0.0/8")
        gw.configure(account(upstream, "shop", senders=["*@shop.example"], maxMessageBytes=4096))
        return gw

    return make


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (b".\r\n", b""),  # an empty message
        (b"..\r\n.\r\n", b".\r\n"),  # a line holding one dot
        (b"...\r\n.. x\r\n.\r\n", b"..\r\n. x\r\n"),
        (b"a.\r\n.b\r\nc\r\n.\r\n", b"a.\r\nb\r\nc\r\n"),  # a period ending a line is not the end
        (b"x\r\n\r\n.\r\n", b"x\r\n\r\n"),
        (b"bare\nlf\r\n.\r\n", b"bare\r\nlf\r\n"),  # a bare LF (RFC 5321 forbids it) goes upstream as CRLF
    ],
)
async def test_dot_stuffing_and_the_end_marker(trusted, upstream: Upstream, wire: bytes, expected: bytes) -> None:
    gw = await trusted()

    def go() -> list[bytes]:
        client = RawClient(gw.port)
        try:
            client.command(b"EHLO raw.test")
            client.command(b"MAIL FROM:<a@shop.example>")
            client.command(b"RCPT TO:<b@example.org>")
            assert client.command(b"DATA")[0].startswith(b"354 ")
            return client.command(wire[:-2])  # command() adds the final CRLF
        finally:
            client.close()

    reply = await in_thread(go)
    assert reply[0].startswith(b"250 2.0.0 OK"), reply
    [message] = upstream.messages
    assert message.data.split(b"\r\n", 3)[3] == expected  # after the three lines of the Received header


async def test_pipelined_commands_after_the_text_are_answered_in_order(trusted, upstream: Upstream) -> None:
    gw = await trusted()

    def go() -> list[list[bytes]]:
        client = RawClient(gw.port)
        try:
            assert b"250-PIPELINING" in client.command(b"EHLO raw.test")
            client.send(
                b"MAIL FROM:<a@shop.example>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
                b"Subject: one\r\n\r\n1\r\n.\r\n"
                b"MAIL FROM:<a@shop.example>\r\nRCPT TO:<c@example.org>\r\nDATA\r\n"
                b"Subject: two\r\n\r\n2\r\n.\r\nQUIT\r\n"
            )
            return [client.reply() for _ in range(9)]
        finally:
            client.close()

    replies = await in_thread(go)
    codes = [reply[0][:3] for reply in replies]
    assert codes == [b"250", b"250", b"354", b"250", b"250", b"250", b"354", b"250", b"221"], replies
    assert [m.rcpt_tos for m in upstream.messages] == [["b@example.org"], ["c@example.org"]]


async def test_an_oversized_text_is_read_to_its_end_and_refused(trusted, upstream: Upstream) -> None:
    gw = await trusted()

    def go() -> tuple[list[bytes], list[bytes]]:
        client = RawClient(gw.port)
        try:
            client.command(b"EHLO raw.test")
            client.command(b"MAIL FROM:<a@shop.example>")
            client.command(b"RCPT TO:<b@example.org>")
            client.command(b"DATA")
            client.send(b"Subject: big\r\n\r\n" + b"z" * 70_000 + b"\r\n.\r\n")
            refused = client.reply()
            return refused, client.command(b"NOOP")  # the session is still in step
        finally:
            client.close()

    refused, noop = await in_thread(go)
    assert refused[0].startswith(b"552 5.3.4 "), refused
    assert noop == [b"250 OK"]
    assert upstream.messages == []


async def test_a_client_leaving_mid_text_costs_nothing(trusted, upstream: Upstream) -> None:
    gw = await trusted()

    def go() -> list[bytes]:
        leaver = RawClient(gw.port)
        leaver.command(b"EHLO raw.test")
        leaver.command(b"MAIL FROM:<a@shop.example>")
        leaver.command(b"RCPT TO:<b@example.org>")
        leaver.command(b"DATA")
        leaver.send(b"Subject: half\r\n\r\nhalf a mess")
        leaver.close()
        other = RawClient(gw.port)
        try:
            other.command(b"EHLO raw.test")
            other.command(b"MAIL FROM:<a@shop.example>")
            other.command(b"RCPT TO:<b@example.org>")
            other.command(b"DATA")
            return other.command(b"Subject: whole\r\n\r\nwhole\r\n.")
        finally:
            other.close()

    assert (await in_thread(go))[0].startswith(b"250 ")
    [message] = upstream.messages
    assert b"Subject: whole" in message.data
