"""The small pure pieces: flags, reply formatting, header reading, the Received header."""

from __future__ import annotations

import argparse
import ipaddress
from datetime import UTC, datetime
from email.utils import getaddresses

import pytest
from aiosmtpd.smtp import SMTP

from mailgate.ingress.envelope import protocol_name, received_header, transaction_message
from mailgate.ingress.options import IngressOptions, add_arguments, from_args
from mailgate.ingress.replies import for_outcome
from mailgate.ingress.session import IngressSMTP
from mailgate.relay.outcomes import Reason, Refused, RetryLater, Sent
from mailgate.relay.rfc822 import field_addresses


def parse(*argv: str) -> IngressOptions:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return from_args(parser.parse_args(list(argv)))


def test_the_listener_is_off_unless_a_port_is_given() -> None:
    options = parse()
    assert not options.enabled
    assert options.trusted_networks == () and not options.allow_plaintext_auth


def test_flags_become_options() -> None:
    options = parse(
        "--smtp-port", "2525", "--smtp-implicit-tls-port", "4650", "--smtp-tls-cert", "c.pem", "--smtp-tls-key", "k.pem",
        "--smtp-trusted-networks", "10.0.0.0/8, 192.168.1.7", "--smtp-default-account", "shop/default",
        "--smtp-max-recipients", "50", "--smtp-hostname", "relay.example", "--smtp-no-smtputf8",
    )
    assert options.enabled and options.tls
    assert (options.port, options.implicit_tls_port) == (2525, 4650)
    assert options.trusted_networks == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.168.1.7/32"))
    assert options.default_account == "shop/default"
    assert (options.max_recipients, options.hostname, options.smtputf8) == (50, "relay.example", False)


@pytest.mark.parametrize(
    "argv",
    [
        ("--smtp-port", "25", "--smtp-tls-cert", "c.pem"),
        ("--smtp-implicit-tls-port", "465"),
        ("--smtp-port", "25", "--smtp-default-account", "no-namespace"),
        ("--smtp-port", "25", "--smtp-max-connections", "0"),
    ],
)
def test_inconsistent_flags_are_refused(argv: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        parse(*argv)


def test_a_bad_network_is_a_usage_error() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--smtp-trusted-networks", "10.0.0.0/33"])


def test_multiline_upstream_refusal_keeps_every_line_and_its_code() -> None:
    refusal = Refused(Reason.UPSTREAM_REFUSED, "refused", upstream=(550, "5.7.1 policy says no\n5.7.1 see https://help.example"))
    assert str(for_outcome(refusal, "id")) == "550-5.7.1 policy says no\r\n550 5.7.1 see https://help.example"


def test_upstream_text_cannot_break_the_reply_framing() -> None:
    refusal = Refused(Reason.UPSTREAM_REFUSED, "refused", upstream=(554, "5.0.0 bad\x00 thing \u2603\x1b"))
    assert str(for_outcome(refusal, "id")) == "554 5.0.0 bad  thing ? "


def test_temporary_conditions_are_451_with_a_4xx_enhanced_code() -> None:
    rate_limited = RetryLater(Reason.RATE_LIMITED, "over the rate", 12.0)
    assert str(for_outcome(rate_limited, "id")) == "451 4.7.0 over the rate (retry after 12s)"
    timeout = Refused(Reason.UPSTREAM_TIMEOUT, "too slow", retryable=True)
    assert str(for_outcome(timeout, "id")) == "451 4.4.2 too slow"
    upstream_5xx_code_on_a_4xx = Refused(Reason.UPSTREAM_REFUSED, "x", retryable=True, upstream=(452, "5.2.2 full"))
    assert str(for_outcome(upstream_5xx_code_on_a_4xx, "id")) == "451 4.0.0 upstream said 452: full"


def test_sent_to_everyone_is_250() -> None:
    sent = Sent("<m@x>", ["a@x"], {}, 250, "2.0.0 queued")
    assert str(for_outcome(sent, "abc")) == "250 2.0.0 OK abc relayed"


def test_received_header_protocols_and_a_hostile_helo() -> None:
    assert protocol_name(extended=False, tls=True, authenticated=True, smtputf8=False) == "SMTP"
    assert protocol_name(extended=True, tls=False, authenticated=False, smtputf8=False) == "ESMTP"
    assert protocol_name(extended=True, tls=True, authenticated=False, smtputf8=False) == "ESMTPS"
    assert protocol_name(extended=True, tls=False, authenticated=True, smtputf8=True) == "UTF8SMTPA"
    header = received_header(
        helo="evil\r\nBcc: x@y (", peer_ip="10.1.2.3", hostname="gw", protocol="ESMTPS", message_id="0123",
        now=datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
    )
    assert header == (
        b"Received: from evil??Bcc:?x?y?? ([10.1.2.3])\r\n\tby gw (mailgate) with ESMTPS id 0123;\r\n"
        b"\tMon, 06 May 2024 07:08:09 +0000\r\n"
    )


def test_header_from_and_message_id_are_read_from_the_header_section_only() -> None:
    data = (
        b"Subject: x\r\n"
        b"FROM: \"Shop, Inc.\" <shop@shop.example>,\r\n"
        b"\tother@shop.example\r\n"
        b"Message-ID:  <abc@shop.example>\r\n"
        b"\r\n"
        b"From: not-a-header@evil.example\r\n"
    )
    message = transaction_message(
        sender="s@shop.example", recipients=["r@x"], data=data, received=b"R: x\r\n", smtputf8=False, fallback_id="f"
    )
    assert message.header_from == ["shop@shop.example", "other@shop.example"]
    assert message.message_id == "<abc@shop.example>"
    assert message.data == b"R: x\r\n" + data
    bare = transaction_message(
        sender="s@x", recipients=["r@x"], data=b"Subject: y\r\n\r\nz\r\n", received=b"", smtputf8=False, fallback_id="f"
    )
    assert (bare.header_from, bare.message_id) == ([], "<f>")


@pytest.mark.parametrize(
    "arg",
    [
        "<a@b.example>",
        "<a@b.example> SIZE=100 BODY=8BITMIME",
        "<first.last+tag@sub.do-main.example>",
        "<jörg@bücher.example> SMTPUTF8",
        "<o'hara@x.example>",
        "<a..b@x.example>",
        "<a@x..example>",
        '<"quoted local"@x.example>',
        "<a@[127.0.0.1]>",
        "a@b.example",
        "<a b@c.example>",
        "<a@b.example.>",
    ],
)
def test_the_fast_path_parse_of_mail_and_rcpt_agrees_with_aiosmtpd(arg: str) -> None:
    reference = SMTP.__new__(SMTP)
    reference.local_part_limit = 0
    fast = IngressSMTP.__new__(IngressSMTP)
    fast.local_part_limit = 0
    assert fast._getaddr(arg) == SMTP._getaddr(reference, arg)


@pytest.mark.parametrize(
    "value",
    [
        "a@b.example",
        " <a@b.example>",
        "Shop Inc <shop@x.example>",
        '"Shop, Inc." <shop@x.example>',
        "a@b.example, c@d.example",
        "a@b.example (comment)",
        "Jörg <jörg@bücher.example>",
        "O'Hara <o@x.example>",
        "Team: a@b.example, c@d.example;",
        "undisclosed-recipients:;",
    ],
)
def test_the_fast_path_for_from_agrees_with_the_email_package(value: str) -> None:
    assert field_addresses("From", f"From: {value}\r\n".encode()) == [a for _, a in getaddresses([value]) if a]


def test_partial_delivery_is_a_5xx_even_when_the_refusal_was_temporary() -> None:
    sent = Sent("<m@x>", ["a@x"], {"b@x": (450, "4.2.0 greylisted")}, 250, "ok")
    reply = for_outcome(sent, "abc")
    assert (reply.code, reply.status) == (550, "5.0.0")
    assert reply.lines == (
        "message abc was relayed to 1 of 2 recipients",
        "delivered: a@x",
        "refused: b@x: 450 greylisted",
        "do not resend to the delivered recipients",
    )
    plain = for_outcome(Sent("<m@x>", ["a@x"], {"b@x": (553, "mailbox name not allowed")}, 250, "ok"), "abc")
    assert (plain.code, plain.status) == (553, "5.0.0")
