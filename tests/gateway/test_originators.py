"""Every originator field (From, Sender, Resent-From, Resent-Sender) is held to the account's ``senders`` over HTTP.

The HTTP doors: a raw ``message/rfc822`` body and the JSON ``headers`` field.
The properties at the end check the parsers themselves: whatever Python's
``email`` package finds as an originator in the bytes that go upstream, the
gateway found too (so the senders check saw it), or the message was refused.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiosmtplib.protocol import normalize_message_line_endings
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mailgate.ingress.envelope import transaction_message as build_smtp_message
from mailgate.relay.envelope import MessageError
from mailgate.relay.rfc822 import crlf_text, parse_raw_message
from tests.gateway.conftest import GatewayHandle, account, message
from tests.gateway.test_send_api import assert_problem
from tests.hostile_headers import canonical, header_section, originators_python_finds
from tests.smtp_servers import Upstream

SENDERS = ["*@shop.example"]


def raw(*headers: bytes) -> bytes:
    return b"".join(h + b"\r\n" for h in (b"To: r@example.org", *headers)) + b"\r\nbody\r\n"


FORBIDDEN_ORIGINATORS = {
    "sender": raw(b"From: app@shop.example", b"Sender: ceo@bank.example"),
    "resent-from": raw(b"From: app@shop.example", b"Resent-From: CEO <ceo@bank.example>"),
    "resent-sender": raw(b"From: app@shop.example", b"resent-sender: ceo@bank.example"),
    "second-resent-from": raw(b"From: app@shop.example", b"Resent-From: b@shop.example", b"Resent-From: ceo@bank.example"),
    "bare-lf-sender": b"To: r@example.org\nFrom: app@shop.example\nsender: ceo@bank.example\n\nbody\n",
    "bare-cr-resent-from": b"To: r@example.org\rFrom: app@shop.example\rResent-From: ceo@bank.example\r\r\nbody\r\n",
}


@pytest.mark.parametrize("params", [None, {"from": "app@shop.example"}], ids=["envelope-from-headers", "envelope-from-param"])
@pytest.mark.parametrize("body", FORBIDDEN_ORIGINATORS.values(), ids=FORBIDDEN_ORIGINATORS.keys())
async def test_raw_message_with_a_forbidden_originator_field_is_refused(
    gw: GatewayHandle, upstream: Upstream, body: bytes, params: dict[str, str] | None
) -> None:
    """With ``?from=`` the Sender is not the envelope sender either: it used to go unchecked."""
    await gw.configure(account(upstream, senders=SENDERS))
    status, problem, response = await gw.send_raw(body, params=params)
    assert_problem(status, problem, response, 403, "sender-not-allowed")
    assert "ceo@bank.example" in problem["detail"]
    assert upstream.messages == []


async def test_raw_message_with_allowed_originator_fields_is_sent(gw: GatewayHandle, upstream: Upstream) -> None:
    await gw.configure(account(upstream, senders=SENDERS))
    body = raw(b"From: app@shop.example", b"Sender: b@shop.example", b"Resent-From: c@shop.example")
    status, answer, _ = await gw.send_raw(body)
    assert status == 200, answer
    assert upstream.messages[0].mail_from == "b@shop.example"  # the Sender is the envelope sender, as documented


UNREADABLE_RAW = {
    "nul": (raw(b"From: app@shop.example", b"X-Tag: a\x00b"), "0x00"),
    "escape-in-from": (raw(b"From: app@shop.example\x1b"), "0x1b"),
    "encoded-word-domain": (raw(b"From: app@shop.example", b"Sender: x@=?utf-8?q?bank.example?="), "ambiguous"),
    "parser-crash": (raw(b"From: app@shop.example", b"Sender: group:; x"), "unreadable"),  # was a 500
}


@pytest.mark.parametrize(("body", "named"), UNREADABLE_RAW.values(), ids=UNREADABLE_RAW.keys())
async def test_raw_message_with_an_unreadable_header_section_is_refused(
    gw: GatewayHandle, upstream: Upstream, body: bytes, named: str
) -> None:
    await gw.configure(account(upstream, senders=SENDERS))
    status, problem, response = await gw.send_raw(body)
    assert_problem(status, problem, response, 400, "invalid-request")
    assert any(named in error["message"] for error in problem["errors"]), problem
    assert upstream.messages == []


@pytest.mark.parametrize("name", ["Resent-From", "resent-sender", "Resent-To", "Resent-Bcc", "Sender"])
async def test_json_headers_refuse_originator_and_resent_fields(gw: GatewayHandle, upstream: Upstream, name: str) -> None:
    await gw.configure(account(upstream, senders=SENDERS))
    status, problem, response = await gw.send(message(headers={name: "ceo@bank.example"}))
    assert_problem(status, problem, response, 400, "invalid-request")
    assert [error["field"] for error in problem["errors"]] == [f"headers.{name}"]
    assert upstream.messages == []


# --------------------------------------------------------------------------- the parsers, as properties

PROPERTY = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def assert_covers(found_by_gateway: list[str], upstream_bytes: bytes) -> None:
    """Every originator Python finds in what goes upstream is one the gateway checked."""
    checked = {canonical(address) for address in found_by_gateway}
    missed = [a for a in originators_python_finds(upstream_bytes) if canonical(a) not in checked]
    assert missed == [], (found_by_gateway, upstream_bytes)


@PROPERTY
@given(data=header_section())
@example(data=b"From: g: h: ceo@bank.example;;\r\n\r\nbody")  # a nested group: the modern policy's parser crashes
def test_property_smtp_originators_cover_what_python_finds(data: bytes) -> None:
    received = b"Received: from x ([127.0.0.1])\r\n\tby gw (mailgate) with ESMTP id 1;\r\n\tdate\r\n"
    try:
        out = build_smtp_message(
            sender="s@shop.example", recipients=["r@x"], data=data, received=received, smtputf8=False, fallback_id="f"
        )
    except MessageError:
        return
    assert_covers(out.originators, out.data)


@PROPERTY
@given(data=header_section())
def test_property_raw_http_originators_cover_what_python_finds(data: bytes) -> None:
    kwargs: dict[str, Any] = {"mail_from": None, "rcpt_to": ["r@example.org"]}
    try:
        out = parse_raw_message(data, **kwargs)
    except MessageError:
        return
    assert_covers(out.originators, out.data)


@PROPERTY
@given(data=st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b".", b" "]), min_size=1).map(b"".join))
def test_property_the_checked_text_is_the_text_aiosmtplib_sends(data: bytes) -> None:
    """The pool sends what aiosmtplib's normalisation makes of the message; the checks read ``crlf_text``."""
    assert crlf_text(data) == normalize_message_line_endings(data)
