"""The peer relay endpoint (``POST /v1/relay/accounts/{ns}/{name}`` on the admin API) and its wire format."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from bench.fuzz import run_schemathesis
from mailgate.gateway.relay_wire import RelayAnswer
from mailgate.relay.outcomes import DeliveryUnknown, Outcome, Reason, Refused, RetryLater, Sent
from tests.gateway.conftest import ADMIN_TOKEN, GatewayFactory, GatewayHandle, account
from tests.smtp_servers import Upstream

PATH = "/v1/relay/accounts/shop/billing"
DATA = (
    b"Received: from x ([127.0.0.1])\r\n\tby gw-a.test (mailgate) with ESMTPSA id 1;\r\n\tdate\r\n"
    b"From: app@shop.example\r\n\r\nhi\r\n"
)


def relay_request(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "mailFrom": "app@shop.example",
        "rcptTo": ["ops@example.org"],
        "headerFrom": ["app@shop.example"],
        "originators": ["app@shop.example"],
        "messageId": "<1@shop.example>",
        "smtputf8": False,
        "data": base64.b64encode(DATA).decode(),
    }
    body.update(fields)
    return body


async def relay(gw: GatewayHandle, body: Any, *, path: str = PATH, token: str = ADMIN_TOKEN) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"}
    async with gw.http.post(gw.admin_url + path, json=body, headers=headers) as response:
        return response.status, await response.json(content_type=None)


async def test_a_relayed_message_is_sent_as_it_came_and_the_answer_is_the_outcome(gw: GatewayHandle, upstream: Upstream) -> None:
    await gw.configure(account(upstream, share={"maxConnections": 1}))
    status, body = await relay(gw, relay_request())
    assert status == 200, body
    assert body["outcome"] == "sent" and body["accepted"] == ["ops@example.org"] and body["upstream"]["code"] == 250
    [message] = upstream.messages
    assert message.data == DATA  # no header added, nothing rewritten: the forwarding gateway's Received is the hop
    assert message.mail_from == "app@shop.example" and message.rcpt_tos == ["ops@example.org"]


@pytest.mark.parametrize(
    ("config", "fields", "expected"),
    [
        ({"share": {"maxConnections": 0, "peers": ["http://127.0.0.1:9"]}}, {}, ("retryLater", "peer-unavailable")),
        ({"suspend": True}, {}, ("retryLater", "account-suspended")),
        ({"senders": ["app@shop.example"]}, {"originators": ["ceo@shop.example"]}, ("refused", "sender-not-allowed")),
        ({"maxMessageBytes": 1024}, {"data": base64.b64encode(DATA + b"x" * 1024).decode()}, ("refused", "message-too-large")),
    ],
    ids=["would-forward-again", "suspended", "originator-not-allowed", "too-large"],
)
async def test_the_peer_checks_again_under_its_own_configuration(
    gw: GatewayHandle, upstream: Upstream, config: dict[str, Any], fields: dict[str, Any], expected: tuple[str, str]
) -> None:
    await gw.configure(account(upstream, **config))
    status, body = await relay(gw, relay_request(**fields))
    assert status == 200, body
    assert (body["outcome"], body["reason"]) == expected, body
    assert upstream.messages == []


async def test_an_unknown_account_is_an_outcome_and_a_malformed_request_a_problem(gw: GatewayHandle, upstream: Upstream) -> None:
    await gw.configure(account(upstream))
    status, body = await relay(gw, relay_request(), path="/v1/relay/accounts/shop/nobody")
    assert (status, body["outcome"], body["reason"]) == (200, "refused", "unknown-account"), body
    for bad in (relay_request(smtputf8=1), relay_request(rcptTo=[]), relay_request(data="not base64"), [1]):
        status, body = await relay(gw, bad)
        assert status == 400 and body["type"].endswith("/invalid-request"), (bad, body)
    status, body = await relay(gw, relay_request(), token="not-the-admin-token")
    assert status == 401
    async with gw.http.post(gw.url + PATH, json=relay_request()) as response:  # never on the send API's port
        assert response.status == 404
    assert upstream.messages == []


@pytest.mark.parametrize(
    "outcome",
    [
        Sent("<m@x>", ["a@example.org"], {"b@example.org": (550, "5.1.1 no such user")}, 250, "2.0.0 queued"),
        Refused(Reason.UPSTREAM_REFUSED, "refused", False, (554, "5.7.1 spam")),
        Refused(Reason.UNKNOWN_ACCOUNT, "no account"),
        RetryLater(Reason.RATE_LIMITED, "over the rate", 12.0),
        RetryLater(Reason.UPSTREAM_UNAVAILABLE, "closing", 5.0, (421, "4.3.0 bye")),
        DeliveryUnknown("dropped after the dot"),
    ],
)
def test_every_outcome_crosses_the_wire_unchanged(outcome: Outcome) -> None:
    wire = RelayAnswer.of(outcome).model_dump_json(by_alias=True)
    assert RelayAnswer.model_validate_json(wire).outcome() == outcome


@pytest.mark.timeout(300)
async def test_the_relay_operation_conforms_to_its_openapi_document(gateway_factory: GatewayFactory, upstream: Upstream) -> None:
    """schemathesis with every default check, on the ``peer`` tag alone: the admin fuzzing (tag ``admin``) configures
    accounts with made-up upstream hosts, which a relayed message would then be sent to; here every account is local."""
    gw = await gateway_factory()
    await gw.configure(account(upstream), account(upstream, name="other", share={"maxConnections": 0, "peers": [gw.url]}))
    tally = await run_schemathesis(gw.admin_url, tag="peer", max_examples=25, seed=20261128, token=ADMIN_TOKEN, timeout=240)
    assert tally.exit_code == 0, tally.output[-8000:]
    assert tally.requests >= 50, tally.output[-3000:]
    assert sum(tally.accepted.values()) >= 10, tally.accepted
