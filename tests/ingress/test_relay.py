"""Relay semantics: 250 only for what the upstream accepted, bytes passed on as sent, limits shared with HTTP."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
import pytest

from mailgate.snapshot import AccountConfig
from tests.ingress.conftest import IngressFactory, IngressGateway, PlainUpstream, account, in_thread, transaction, until
from tests.smtp_servers import Upstream

LOGIN = ("grafana", "grafana-pass")
SENDER = "alerts@shop.example"
RECEIVED = re.compile(
    rb"\AReceived: from client\.test \(\[127\.0\.0\.1\]\)\r\n"
    rb"\tby gw\.test\.example \(mailgate\) with (?P<proto>[A-Z0-9]+) id (?P<id>[0-9a-f]{16});\r\n"
    rb"\t[A-Z][a-z]{2}, \d{1,2} [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d \+0000\r\n"
)

# Lines SMTP must escape (a lone dot, leading dots), 8-bit UTF-8 and Latin-1 bytes, a long line, trailing spaces.
BODY = (
    b"From: Alerts <alerts@shop.example>\r\n"
    b"To: ops@example.org\r\n"
    b"Subject: =?utf-8?q?D=C3=A9j=C3=A0_vu?=\r\n"
    b"Message-ID: <fixed-id@shop.example>\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b".\r\n"
    b"..two dots\r\n"
    b".leading dot\r\n"
    b"caf\xc3\xa9 \xe2\x82\xac and latin-1 \xe9\r\n"
    b"trailing spaces   \r\n" + b"x" * 990 + b"\r\n"
    b"\r\n"
    b"last line\r\n"
)


def login_account(upstream: Upstream, **spec: Any) -> AccountConfig:
    return account(upstream, "alerts", senders=["*@shop.example"], clients={LOGIN[0]: LOGIN[1]}, **spec)


def send(gw: IngressGateway, data: bytes = BODY, recipients: list[str] | None = None, *options: str) -> list[tuple[int, str]]:
    with gw.smtp(login=LOGIN) as client:
        return transaction(client, SENDER, recipients or ["ops@example.org"], data, *options)


async def test_starttls_auth_send_arrives_byte_identical_apart_from_received(gw: IngressGateway, upstream: Upstream) -> None:
    gw.configure(login_account(upstream))
    replies = await in_thread(send, gw)
    assert [code for code, _ in replies] == [250, 250, 250]
    assert re.fullmatch(r"2\.0\.0 OK [0-9a-f]{16} relayed", replies[-1][1])
    [message] = upstream.messages
    match = RECEIVED.match(message.data)
    assert match is not None, message.data[:200]
    assert match["proto"] == b"ESMTPSA"
    assert match["id"].decode() in replies[-1][1]
    assert message.data[match.end() :] == BODY
    assert (message.mail_from, message.rcpt_tos) == (SENDER, ["ops@example.org"])


async def test_smtputf8_message_reaches_an_upstream_that_offers_it(gw: IngressGateway, upstream: Upstream) -> None:
    gw.configure(account(upstream, "intl", senders=["*@bücher.example"], clients={LOGIN[0]: LOGIN[1]}))
    data = "From: Jörg <jörg@bücher.example>\r\nTo: zoë@例え.jp\r\nSubject: Grüße\r\n\r\nHallo Zoë\r\n".encode()

    def go() -> list[tuple[int, str]]:
        with gw.smtp(login=LOGIN) as client:
            assert client.has_extn("smtputf8") and client.has_extn("8bitmime")
            return transaction(client, "jörg@bücher.example", ["zoë@例え.jp"], data, "SMTPUTF8", "BODY=8BITMIME")

    replies = await in_thread(go)
    assert [code for code, _ in replies] == [250, 250, 250], replies
    [message] = upstream.messages
    assert (message.mail_from, message.rcpt_tos) == ("jörg@bücher.example", ["zoë@例え.jp"])
    assert "SMTPUTF8" in message.mail_options
    match = RECEIVED.match(message.data)
    assert match is not None and match["proto"] == b"UTF8SMTPSA"
    assert message.data[match.end() :] == data


async def test_smtputf8_message_for_an_upstream_without_it_is_refused_not_mangled(gw: IngressGateway) -> None:
    async with PlainUpstream(smtputf8=False) as upstream:
        gw.configure(account(upstream, "intl", senders=["*@bücher.example"], clients={LOGIN[0]: LOGIN[1]}))  # type: ignore[arg-type]

        def go() -> list[tuple[int, str]]:
            with gw.smtp(login=LOGIN) as client:
                return transaction(client, "jörg@bücher.example", ["a@example.org"], b"Subject: x\r\n\r\nx\r\n", "SMTPUTF8")

        replies = await in_thread(go)
        assert replies[-1][0] == 553 and replies[-1][1].startswith("5.6.7 "), replies
        assert upstream.messages == []


async def test_non_ascii_address_without_smtputf8_is_refused(gw: IngressGateway, upstream: Upstream) -> None:
    gw.configure(login_account(upstream))

    def go() -> tuple[int, bytes]:
        with gw.smtp(login=LOGIN) as client:
            client.mail(SENDER)
            client.send("RCPT TO:<zoë@example.org>\r\n".encode())  # smtplib itself refuses to send this
            return client.getreply()

    code, text = await in_thread(go)
    assert (code, text[:5]) == (553, b"5.6.7")


@pytest.mark.parametrize(
    ("knob", "value", "expected"),
    [
        ("rcpt_replies", {"ops@example.org": "421 4.3.0 closing, too busy"}, (451, "4.3.0 upstream said 421: closing")),
        # This upstream hangs up before its 421 is read: no verdict after the dot, the client hears "maybe".
        ("data_reply", "421 4.3.0 closing, too busy", (451, "4.4.2 ")),
        ("data_reply", "450 4.2.1 mailbox busy, try later", (451, "4.2.1 upstream said 450: mailbox busy, try later")),
        ("data_reply", "451 try again", (451, "4.0.0 upstream said 451: try again")),
        ("data_reply", "550 5.7.1 message refused by policy", (550, "5.7.1 message refused by policy")),
        ("data_reply", "554 transaction failed", (554, "5.0.0 transaction failed")),
        ("drop_at_data", True, (451, "4.4.1 ")),
    ],
)
async def test_upstream_answers_map_to_451_or_their_own_5xx_never_a_false_250(
    gw: IngressGateway, upstream: Upstream, knob: str, value: object, expected: tuple[int, str]
) -> None:
    gw.configure(login_account(upstream))
    setattr(upstream, knob, value)
    replies = await in_thread(send, gw)
    code, text = replies[-1]
    assert code == expected[0] and text.startswith(expected[1]), replies
    assert upstream.messages == []


async def test_a_drop_after_the_final_dot_is_a_451_that_says_it_may_have_been_delivered(
    gw: IngressGateway, upstream: Upstream
) -> None:
    """Duplicates over loss, as Postfix: the client keeps the message and retries, and is told why it may get two."""
    gw.configure(login_account(upstream))
    upstream.drop_after_dot = True
    replies = await in_thread(send, gw)
    code, text = replies[-1]
    assert code == 451 and text.startswith("4.4.2 ") and "may have been delivered" in text, replies
    assert len(upstream.messages) == 1


async def test_stalled_upstream_becomes_451(ingress_factory: IngressFactory, upstream: Upstream) -> None:
    gw = await ingress_factory(upstream_timeout=1.0)  # the login before it must fit: a second, even on a loaded machine
    gw.configure(login_account(upstream))
    upstream.data_delay = 3.0
    replies = await in_thread(send, gw)
    assert replies[-1][0] == 451 and replies[-1][1].startswith("4.4.2 "), replies


async def test_saturated_pool_becomes_451(ingress_factory: IngressFactory, upstream: Upstream) -> None:
    gw = await ingress_factory(upstream_timeout=10.0)
    gw.configure(login_account(upstream, pool={"maxConnections": 1, "acquireTimeoutSeconds": 0}))
    upstream.data_delay = 3.0  # long enough for the second session to reach the pool, however slow the machine
    first = asyncio.create_task(in_thread(send, gw))
    await until(lambda: gw.gateway.pool.stats()["apps/alerts"]["active"] == 1)  # the only connection is in DATA
    second = await in_thread(send, gw)
    assert second[-1][0] == 451 and second[-1][1].startswith("4.4.5 "), second
    assert (await first)[-1][0] == 250


async def test_multi_recipient_partial_refusal_is_a_5xx_naming_who_got_it(gw: IngressGateway, upstream: Upstream) -> None:
    gw.configure(login_account(upstream))
    upstream.rcpt_replies = {"gone@example.org": "550 5.1.1 no such user"}
    replies = await in_thread(send, gw, BODY, ["a@example.org", "gone@example.org", "b@example.org"])
    assert [code for code, _ in replies[:4]] == [250, 250, 250, 250]  # RCPT is accepted here, relayed after DATA
    code, text = replies[-1]
    assert code == 550 and text.startswith("5.1.1 message "), text
    assert "relayed to 2 of 3 recipients" in text
    assert "refused: gone@example.org: 550 no such user" in text
    assert "delivered: a@example.org" in text and "delivered: b@example.org" in text
    [message] = upstream.messages
    assert message.rcpt_tos == ["a@example.org", "b@example.org"]


async def test_every_recipient_refused_passes_the_upstream_code_on(gw: IngressGateway, upstream: Upstream) -> None:
    gw.configure(login_account(upstream))
    upstream.rcpt_replies = {"a@example.org": "550 5.1.1 no such user", "b@example.org": "550 5.1.1 no such user"}
    replies = await in_thread(send, gw, BODY, ["a@example.org", "b@example.org"])
    assert replies[-1] == (550, "5.1.1 no such user")
    upstream.rcpt_replies = {"a@example.org": "450 4.2.0 greylisted"}
    replies = await in_thread(send, gw, BODY, ["a@example.org"])
    assert replies[-1] == (451, "4.2.0 upstream said 450: greylisted")
    assert upstream.messages == []


async def test_size_over_the_account_limit_is_refused_at_mail_and_at_data(gw: IngressGateway, upstream: Upstream) -> None:
    gw.configure(login_account(upstream, maxMessageBytes=4096))
    big = b"Subject: big\r\n\r\n" + (b"y" * 76 + b"\r\n") * 60

    def go() -> tuple[bool, tuple[int, bytes], tuple[int, bytes], list[tuple[int, str]]]:
        with gw.smtp(login=LOGIN) as client:
            advertised = client.esmtp_features.get("size") == "4096"
            at_mail = client.mail(SENDER, [f"SIZE={len(big)}"])
            client.rset()
            at_data_mail = client.mail(SENDER)  # no SIZE declared: caught while reading DATA
            client.rcpt("ops@example.org")
            at_data = client.data(big)
            small = transaction(client, SENDER, ["ops@example.org"], b"Subject: small\r\n\r\nok\r\n", "SIZE=30")
            assert at_data_mail[0] == 250
            return advertised, at_mail, at_data, small

    advertised, at_mail, at_data, small = await in_thread(go)
    assert advertised
    assert at_mail[0] == 552 and at_mail[1].startswith(b"5.3.4 "), at_mail
    assert at_data[0] == 552, at_data
    assert small[-1][0] == 250
    assert len(upstream.messages) == 1


async def test_too_many_recipients_get_452(ingress_factory: IngressFactory, upstream: Upstream) -> None:
    gw = await ingress_factory(max_recipients=2)
    gw.configure(login_account(upstream))
    replies = await in_thread(send, gw, BODY, ["a@example.org", "b@example.org", "c@example.org"])
    assert [code for code, _ in replies] == [250, 250, 250, 452, 250]
    assert replies[3][1].startswith("4.5.3 ")
    assert upstream.messages[0].rcpt_tos == ["a@example.org", "b@example.org"]


async def test_rate_limit_is_the_accounts_and_shared_with_http(gw: IngressGateway, upstream: Upstream) -> None:
    gw.configure(login_account(upstream, rateLimit={"messagesPerMinute": 1}))  # a bucket of one message
    url = f"{gw.gateway.url}/v1/accounts/apps/alerts/messages"
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, json={"from": SENDER, "to": ["ops@example.org"], "subject": "via HTTP", "text": "hi"}) as response,
    ):
        assert response.status == 200, await response.text()
    replies = await in_thread(send, gw)
    assert replies[-1][0] == 451 and replies[-1][1].startswith("4.7.0 "), replies
    assert "rate limit" in replies[-1][1]
    assert len(upstream.messages) == 1


async def test_header_from_outside_the_accounts_senders_is_refused(gw: IngressGateway, upstream: Upstream) -> None:
    gw.configure(login_account(upstream))
    spoofed = b"From: CEO <ceo@bank.example>\r\nSubject: pay now\r\n\r\nx\r\n"
    replies = await in_thread(send, gw, spoofed)
    assert replies[-1][0] == 550 and replies[-1][1].startswith("5.7.1 "), replies
    assert "ceo@bank.example" in replies[-1][1]
    assert upstream.messages == []
