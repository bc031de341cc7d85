"""Sender-dependent routing through the SMTP listener: each message reaches the upstream of the account chosen."""

from __future__ import annotations

import logging

import aiohttp
import pytest

from tests.ingress.conftest import IngressFactory, IngressGateway, account, in_thread, transaction
from tests.smtp_servers import Upstream

ADMIN_TOKEN = "ingress-admin-token"


def message(sender: str) -> bytes:
    return f"From: {sender}\r\nSubject: routed\r\n\r\nhello\r\n".encode()


def send_unauthenticated(gw: IngressGateway, sender: str) -> list[tuple[int, str]]:
    with gw.smtp(starttls=False) as client:
        return transaction(client, sender, ["ops@example.org"], message(sender))


@pytest.fixture
async def upstreams(upstream_factory) -> dict[str, Upstream]:
    return {name: upstream_factory() for name in ("billing", "shop", "eu", "fallback")}


async def configure(gw: IngressGateway, upstreams: dict[str, Upstream]) -> None:
    gw.configure(
        account(upstreams["billing"], "billing", senders=["billing@shop.example"]),
        account(upstreams["shop"], "shop", senders=["*@shop.example"], clients={"shop-app": "pw"}),
        account(upstreams["eu"], "eu", senders=["*@*.shop.example"]),
        account(upstreams["fallback"], "fallback", senders=[]),
    )


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        ("billing@shop.example", "billing"),  # exact address
        ("news@shop.example", "shop"),  # *@domain
        ("news@de.shop.example", "eu"),  # *@*.domain
        ("ops@elsewhere.example", "fallback"),  # the default account
    ],
)
async def test_unauthenticated_trusted_client_is_routed_by_envelope_sender(
    ingress_factory: IngressFactory, upstreams: dict[str, Upstream], sender: str, expected: str
) -> None:
    gw = await ingress_factory(trusted_networks="127.0.0.0/8", default_account="apps/fallback")
    await configure(gw, upstreams)
    replies = await in_thread(send_unauthenticated, gw, sender)
    assert replies[-1][0] == 250, replies
    assert {name: len(u.messages) for name, u in upstreams.items()} == {n: int(n == expected) for n in upstreams}
    assert upstreams[expected].messages[0].mail_from == sender


async def test_without_a_default_account_an_unclaimed_sender_gets_550(
    ingress_factory: IngressFactory, upstreams: dict[str, Upstream]
) -> None:
    gw = await ingress_factory(trusted_networks="127.0.0.0/8")
    await configure(gw, upstreams)
    replies = await in_thread(send_unauthenticated, gw, "ops@elsewhere.example")
    assert replies == [(550, "5.7.1 no account may send for ops@elsewhere.example")]
    assert all(not u.messages for u in upstreams.values())


async def test_a_logged_in_client_sends_through_its_own_account_only_as_its_senders(
    gw: IngressGateway, upstreams: dict[str, Upstream]
) -> None:
    await configure(gw, upstreams)

    def go(sender: str) -> list[tuple[int, str]]:
        with gw.smtp(login=("shop-app", "pw")) as client:
            return transaction(client, sender, ["ops@example.org"], message(sender))

    # billing@shop.example routes to "billing" by sender, but this client belongs to "shop", whose *@shop.example allows it.
    assert (await in_thread(go, "billing@shop.example"))[-1][0] == 250
    assert len(upstreams["shop"].messages) == 1 and not upstreams["billing"].messages
    refused = await in_thread(go, "ops@de.shop.example")  # another account's sender
    assert refused == [(550, "5.7.1 sender ops@de.shop.example is not allowed for account apps/shop")]
    assert not upstreams["eu"].messages


async def test_duplicate_exact_claim_is_refused_logged_and_shown_in_admin_status(
    ingress_factory: IngressFactory, upstream_factory, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await ingress_factory(trusted_networks="127.0.0.0/8", admin_token=ADMIN_TOKEN)
    first, second = upstream_factory(), upstream_factory()
    gw.configure(
        account(first, "billing", senders=["billing@shop.example"]),
        account(second, "invoices", senders=["billing@shop.example", "*@invoices.example"]),
    )
    with caplog.at_level(logging.WARNING, logger="mailgate.relay.routing"):
        replies = await in_thread(send_unauthenticated, gw, "billing@shop.example")
    assert replies[0][0] == 451 and replies[0][1].startswith("4.3.5 sender billing@shop.example is claimed by several accounts")
    assert "apps/billing, apps/invoices" in replies[0][1]
    assert "sender routing conflict: accounts apps/billing, apps/invoices" in caplog.text
    assert not first.messages and not second.messages
    async with aiohttp.ClientSession() as http, http.get(
        f"{gw.gateway.admin_url}/v1/status", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as response:
        status = await response.json()
    for key in ("apps/billing", "apps/invoices"):
        assert status["accounts"][key]["senderConflicts"] == ["billing@shop.example"]
    assert (await in_thread(send_unauthenticated, gw, "x@invoices.example"))[-1][0] == 250  # the rest still routes
