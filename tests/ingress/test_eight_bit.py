"""8-bit message data is declared upstream as BODY=8BITMIME (RFC 6152), from both front doors,
and refused, never mangled, when the upstream does not offer 8BITMIME."""

from __future__ import annotations

from typing import Any

import aiohttp
from aiosmtpd.smtp import SMTP, Envelope

from tests.ingress.conftest import IngressGateway, PlainUpstream, account, in_thread, transaction
from tests.smtp_servers import Upstream

LOGIN = ("grafana", "grafana-pass")
SENDER = "alerts@shop.example"
EIGHT_BIT = b"From: alerts@shop.example\r\nTo: ops@example.org\r\nSubject: x\r\n\r\ncaf\xc3\xa9 \xe9\r\n"
SEVEN_BIT = b"From: alerts@shop.example\r\nTo: ops@example.org\r\nSubject: x\r\n\r\ncafe\r\n"


class SevenBitUpstream(PlainUpstream):
    """An upstream that offers neither 8BITMIME nor SMTPUTF8 (aiosmtpd always offers 8BITMIME)."""

    def __init__(self) -> None:
        super().__init__(smtputf8=False)

    async def handle_EHLO(self, server: SMTP, session: Any, envelope: Envelope, hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname  # aiosmtpd leaves accepting the greeting to this hook
        return [line for line in responses if "8BITMIME" not in line.upper()]


def smtp_send(gw: IngressGateway, data: bytes) -> list[tuple[int, str]]:
    with gw.smtp(login=LOGIN) as client:
        return transaction(client, SENDER, ["ops@example.org"], data)


async def http_send(gw: IngressGateway, data: bytes) -> tuple[int, dict[str, Any]]:
    url = f"{gw.gateway.url}/v1/accounts/apps/alerts/messages"
    async with aiohttp.ClientSession() as http, http.post(url, data=data, headers={"Content-Type": "message/rfc822"}) as response:
        return response.status, await response.json(content_type=None)


def alerts(upstream: Upstream | PlainUpstream) -> Any:
    return account(upstream, "alerts", senders=["*@shop.example"], clients={LOGIN[0]: LOGIN[1]})  # type: ignore[arg-type]


async def test_eight_bit_smtp_message_is_declared_upstream_and_seven_bit_is_not(gw: IngressGateway, upstream: Upstream) -> None:
    gw.configure(alerts(upstream))
    assert [code for code, _ in await in_thread(smtp_send, gw, EIGHT_BIT)] == [250, 250, 250]
    assert [code for code, _ in await in_thread(smtp_send, gw, SEVEN_BIT)] == [250, 250, 250]
    eight, seven = upstream.messages
    assert "BODY=8BITMIME" in eight.mail_options
    assert eight.data.endswith(EIGHT_BIT)  # passed on byte for byte after the Received header
    assert not [option for option in seven.mail_options if option.upper().startswith("BODY=")]


async def test_eight_bit_http_raw_message_is_declared_upstream(gw: IngressGateway, upstream: Upstream) -> None:
    gw.configure(alerts(upstream))
    status, body = await http_send(gw, EIGHT_BIT)
    assert status == 200, body
    [message] = upstream.messages
    assert "BODY=8BITMIME" in message.mail_options
    assert b"caf\xc3\xa9 \xe9" in message.data


async def test_eight_bit_data_for_an_upstream_without_8bitmime_is_refused_not_mangled(gw: IngressGateway) -> None:
    async with SevenBitUpstream() as upstream:
        gw.configure(alerts(upstream))
        replies = await in_thread(smtp_send, gw, EIGHT_BIT)
        assert replies[-1][0] == 553 and replies[-1][1].startswith("5.6.7 "), replies
        assert "8BITMIME" in replies[-1][1]
        status, body = await http_send(gw, EIGHT_BIT)
        assert status == 502 and body["type"].endswith("upstream-unsupported"), body
        assert "8BITMIME" in body["detail"]
        assert upstream.messages == []
        # 7-bit data still goes through the same upstream: nothing else changed.
        replies = await in_thread(smtp_send, gw, SEVEN_BIT)
        assert [code for code, _ in replies] == [250, 250, 250], replies
        [message] = upstream.messages
        assert not [option for option in message.mail_options if option.upper().startswith("BODY=")]
