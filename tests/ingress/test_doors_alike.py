"""One table of scenarios through both doors (issue 16): HTTP ``POST /v1/messages`` and SMTP must agree.

Each scenario configures accounts, sends one message from one sender through
the HTTP routed endpoint and through the SMTP ingress (a trusted client, so
routing by sender decides in both), and asserts the equivalent outcome: the
same account's upstream receives it, or the refusal is the same condition
(problem type on HTTP, reply code and enhanced status on SMTP).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from mailgate.snapshot import AccountConfig
from tests.ingress.conftest import IngressFactory, account, in_thread, transaction
from tests.smtp_servers import Upstream

RECIPIENT = "ops@example.org"


@dataclasses.dataclass(frozen=True)
class Refusal:
    http_status: int
    problem: str  # slug
    smtp_code: int
    smtp_status: str


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    sender: str
    accounts: Callable[[dict[str, Upstream]], list[AccountConfig]]
    expect: str | Refusal  # the upstream (by account name) that receives the message, or the refusal
    size: int = 200
    default_account: str | None = None
    header_from: str | None = None  # a From header other than the envelope sender


def routed(upstreams: dict[str, Upstream], **extra: dict[str, Any]) -> list[AccountConfig]:
    """Four accounts claiming senders by exact address, domain and subdomain wildcard, plus a catch-all."""
    senders = {
        "exact": ["ceo@shop.example"],
        "domain": ["*@shop.example"],
        "wildcard": ["*@*.corp.example"],
        "fallback": [],
    }
    return [account(upstreams[name], name, senders=patterns, **extra.get(name, {})) for name, patterns in senders.items()]


SCENARIOS = [
    Scenario("exact address beats the domain", "ceo@shop.example", routed, "exact"),
    Scenario("domain", "billing@shop.example", routed, "domain"),
    Scenario("subdomain wildcard", "alerts@eu.corp.example", routed, "wildcard"),
    Scenario("default account", "someone@elsewhere.example", routed, "fallback", default_account="apps/fallback"),
    Scenario("no route", "someone@elsewhere.example", routed, Refusal(403, "sender-not-allowed", 550, "5.7.1")),
    Scenario(
        "routing conflict",
        "billing@shop.example",
        lambda u: [*routed(u), account(u["exact"], "twin", senders=["*@shop.example"])],
        Refusal(503, "routing-conflict", 451, "4.3.5"),
    ),
    Scenario(
        "suspended",
        "billing@shop.example",
        lambda u: routed(u, domain={"suspend": True}),
        Refusal(503, "account-suspended", 451, "4.3.2"),
    ),
    Scenario(
        "rate-limited (0 left after the first send)",
        "billing@shop.example",
        lambda u: routed(u, domain={"rateLimit": {"messagesPerMinute": 1}}),
        Refusal(429, "rate-limited", 451, "4.7.0"),
    ),
    Scenario(
        "too large",
        "billing@shop.example",
        lambda u: routed(u, domain={"maxMessageBytes": 2048}),
        Refusal(413, "message-too-large", 552, "5.3.4"),
        size=8192,
    ),
    Scenario(
        "From header not in the senders",
        "billing@shop.example",
        routed,
        Refusal(403, "sender-not-allowed", 550, "5.7.1"),
        header_from="ceo@bank.example",
    ),
]


def raw_message(scenario: Scenario) -> bytes:
    header_from = scenario.header_from or scenario.sender
    body = b"x" * scenario.size
    return f"From: {header_from}\r\nTo: {RECIPIENT}\r\nSubject: {scenario.name}\r\n\r\n".encode() + body + b"\r\n"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_both_doors_give_the_same_outcome(
    ingress_factory: IngressFactory, upstream_factory: Callable[..., Upstream], scenario: Scenario
) -> None:
    names = ("exact", "domain", "wildcard", "fallback")
    outcomes = {}
    for door in ("http", "smtp"):
        upstreams = {name: upstream_factory() for name in names}
        overrides: dict[str, Any] = {"trusted_networks": "127.0.0.0/8"}
        if scenario.default_account:
            overrides["default_account"] = scenario.default_account
        gw = await ingress_factory(**overrides)
        gw.configure(*scenario.accounts(upstreams))
        if isinstance(scenario.expect, Refusal) and scenario.expect.problem == "rate-limited":
            await _send(door, gw, scenario)  # takes the one token
        outcomes[door] = await _send(door, gw, scenario)
        if isinstance(scenario.expect, str):
            received = {name: len(up.messages) for name, up in upstreams.items()}
            expected = {name: int(name == scenario.expect) for name in names}
            assert received == expected, (door, outcomes[door])
    expect = scenario.expect
    if isinstance(expect, str):
        assert outcomes["http"][0] == 200 and outcomes["smtp"][0] == 250, outcomes
    else:
        assert outcomes["http"] == (expect.http_status, expect.problem), outcomes
        assert outcomes["smtp"] == (expect.smtp_code, expect.smtp_status), outcomes


async def _send(door: str, gw: Any, scenario: Scenario) -> tuple[int, str]:
    data = raw_message(scenario)
    if door == "http":
        async with aiohttp.ClientSession() as http:
            url = f"{gw.gateway.url}/v1/messages"
            headers = {"Content-Type": "message/rfc822"}
            async with http.post(url, data=data, params={"from": scenario.sender}, headers=headers) as response:
                body = await response.json(content_type=None)
                slug = body.get("type", "").rsplit("/", 1)[-1] if response.status >= 400 else ""
                return response.status, slug

    def smtp() -> tuple[int, str]:
        with gw.smtp(starttls=False) as client:
            replies = transaction(client, scenario.sender, [RECIPIENT], data)
        code, text = replies[-1]
        return code, text.split(" ", 1)[0] if code >= 400 else ""

    return await in_thread(smtp)
