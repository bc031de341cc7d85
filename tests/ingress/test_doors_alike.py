"""One table of scenarios through both doors (issue 16): HTTP ``POST /v1/messages`` and SMTP must agree.

Each scenario configures accounts, sends one message from one sender through
the HTTP routed endpoint and through the SMTP ingress (a trusted client, so
routing by sender decides in both), and asserts the equivalent outcome: the
same account's upstream receives it, or the refusal is the same condition
(problem type on HTTP, reply code and enhanced status on SMTP).

Two scenarios need more than one send and sit beside the table, run through
both doors too: an account removed while a message waits for its pool (the
relay core's ``rerouted`` routes it again, the remaining account delivers),
and a pod holding no connection share of the account (a peer delivers).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from mailgate.snapshot import AccountConfig, AccountShare
from tests.ingress.conftest import IngressFactory, IngressGateway, account, in_thread, transaction, until
from tests.smtp_servers import Upstream

RECIPIENT = "ops@example.org"
DOORS = ("http", "smtp")
NAMES = ("exact", "domain", "wildcard", "fallback")
ADMIN_TOKEN = "doors-alike-admin-token"


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
    return letter(scenario.header_from or scenario.sender, scenario.name, size=scenario.size)


def letter(header_from: str, subject: str, *, size: int = 200) -> bytes:
    body = b"x" * size
    return f"From: {header_from}\r\nTo: {RECIPIENT}\r\nSubject: {subject}\r\n\r\n".encode() + body + b"\r\n"


def subjects(upstreams: dict[str, Upstream]) -> dict[str, list[str]]:
    """What each account's upstream received, by Subject: where each message went, and how many times."""
    return {name: [_subject(m.data) for m in up.messages] for name, up in upstreams.items()}


def _subject(data: bytes) -> str:
    for line in data.split(b"\r\n"):
        if line.startswith(b"Subject: "):
            return line.removeprefix(b"Subject: ").decode()
    return ""


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_both_doors_give_the_same_outcome(
    ingress_factory: IngressFactory, upstream_factory: Callable[..., Upstream], scenario: Scenario
) -> None:
    outcomes = {}
    for door in DOORS:
        upstreams = {name: upstream_factory() for name in NAMES}
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
            expected = {name: int(name == scenario.expect) for name in NAMES}
            assert received == expected, (door, outcomes[door])
    expect = scenario.expect
    if isinstance(expect, str):
        assert outcomes["http"][0] == 200 and outcomes["smtp"][0] == 250, outcomes
    else:
        assert outcomes["http"] == (expect.http_status, expect.problem), outcomes
        assert outcomes["smtp"] == (expect.smtp_code, expect.smtp_status), outcomes


OK = {"http": (200, ""), "smtp": (250, "")}


@pytest.mark.parametrize("door", DOORS)
async def test_account_removed_while_a_message_waits_is_routed_again(
    ingress_factory: IngressFactory, upstream_factory: Callable[..., Upstream], door: str
) -> None:
    """The exact-address account's one connection is busy; its second message waits; a push removes the account.

    Nothing reached an upstream for the waiting message, so it follows the
    configuration now in force: the domain account, which also claims the
    sender, delivers it, once. The busy message finishes on its own account.
    """
    sender = "ceo@shop.example"
    upstreams = {name: upstream_factory() for name in NAMES}
    accounts = routed(upstreams, exact={"pool": {"maxConnections": 1}})
    gw = await ingress_factory(trusted_networks="127.0.0.0/8")
    gw.configure(*accounts)
    upstreams["exact"].hold_replies()
    busy = asyncio.create_task(_post(door, gw, sender, letter(sender, "busy")))
    await until(lambda: len(upstreams["exact"].held) == 1)
    waiting = asyncio.create_task(_post(door, gw, sender, letter(sender, "waiting")))
    await until(lambda: gw.gateway.pool.stats()["apps/exact"]["waiting"] == 1)

    gw.configure(*[config for config in accounts if config.name != "exact"])
    await asyncio.wait({waiting}, timeout=10)
    answered_while_busy = waiting.done()  # re-routed at once, not after the busy transaction
    upstreams["exact"].release_replies()
    outcomes = {"busy": await busy, "waiting": await waiting}

    assert outcomes == {"busy": OK[door], "waiting": OK[door]}, (door, outcomes)
    assert answered_while_busy
    expected = {"exact": ["busy"], "domain": ["waiting"], "wildcard": [], "fallback": []}
    assert subjects(upstreams) == expected, (door, outcomes)


Start = Callable[..., Awaitable[IngressGateway]]


@pytest.fixture
def start(ingress_factory: IngressFactory) -> Start:
    """Gateways with an admin API (peers relay SMTP messages through it) and the SMTP ingress trusting loopback."""

    async def make(name: str, **options: Any) -> IngressGateway:
        return await ingress_factory(name=name, admin_token=ADMIN_TOKEN, trusted_networks="127.0.0.0/8", gateway=options)

    return make


@pytest.mark.parametrize("door", DOORS)
async def test_share_0_here_goes_to_a_peer_that_delivers(
    start: Start, upstream_factory: Callable[..., Upstream], door: str
) -> None:
    """Gateway ``a`` holds no connection share of the domain account and names ``b``, which holds one, as its peer."""
    sender = "billing@shop.example"
    upstreams = {name: upstream_factory() for name in NAMES}
    b = await start("gw-b.test")
    assert b.gateway.admin_port is not None
    a = await start("gw-a.test", peer_admin_port=b.gateway.admin_port)
    accounts = routed(upstreams)
    b.configure(*accounts)
    no_share = AccountShare(max_connections=0, peers=[b.gateway.url])
    a.configure(*[c.model_copy(update={"share": no_share}) if c.name == "domain" else c for c in accounts])

    outcome = await _post(door, a, sender, letter(sender, "via a peer"))

    assert outcome == OK[door], (door, outcome)
    assert subjects(upstreams) == {"exact": [], "domain": ["via a peer"], "wildcard": [], "fallback": []}, door
    assert "apps/domain" not in a.gateway.pool.stats()  # a never opened an upstream session for it: b sent it
    assert b.gateway.pool.stats()["apps/domain"]["messages_sent"] == 1


async def _send(door: str, gw: Any, scenario: Scenario) -> tuple[int, str]:
    return await _post(door, gw, scenario.sender, raw_message(scenario))


async def _post(door: str, gw: IngressGateway, sender: str, data: bytes) -> tuple[int, str]:
    """One message through one door: (HTTP status, problem slug) or (SMTP reply code, enhanced status)."""
    if door == "http":
        async with aiohttp.ClientSession() as http:
            url = f"{gw.gateway.url}/v1/messages"
            headers = {"Content-Type": "message/rfc822"}
            async with http.post(url, data=data, params={"from": sender}, headers=headers) as response:
                body = await response.json(content_type=None)
                slug = body.get("type", "").rsplit("/", 1)[-1] if response.status >= 400 else ""
                return response.status, slug

    def smtp() -> tuple[int, str]:
        with gw.smtp(starttls=False) as client:
            replies = transaction(client, sender, [RECIPIENT], data)
        code, text = replies[-1]
        return code, text.split(" ", 1)[0] if code >= 400 else ""

    return await in_thread(smtp)
