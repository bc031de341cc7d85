"""Sender-dependent routing over the live account registry (the same object the HTTP API can call)."""

from __future__ import annotations

import logging

import pytest

from mailgate.pool import SMTPPool
from mailgate.relay.accounts import AccountRegistry
from mailgate.relay.outcomes import Reason, Refused
from mailgate.relay.routing import NoRoute, Route, Router, Via, Why
from mailgate.snapshot import AccountConfig, ConfigSnapshot


def config(name: str, senders: list[str], namespace: str = "apps") -> AccountConfig:
    return AccountConfig.model_validate(
        {
            "namespace": namespace,
            "name": name,
            "spec": {"server": {"host": "127.0.0.1", "port": 2525, "tls": "none"}, "senders": senders},
        }
    )


@pytest.fixture
async def registry() -> AccountRegistry:
    registry = AccountRegistry(SMTPPool())
    registry.apply_snapshot(
        ConfigSnapshot(
            revision=1,
            accounts=[
                config("billing", ["billing@shop.example"]),
                config("shop", ["*@shop.example"]),
                config("eu", ["*@*.shop.example"]),
                config("eu-de", ["*@*.de.shop.example"]),
                config("catchall", []),
            ],
        )
    )
    return registry


def routed(decision: Route | NoRoute) -> tuple[str, Via]:
    assert isinstance(decision, Route), decision
    return decision.account.key, decision.via


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        ("billing@shop.example", "apps/billing"),  # exact beats *@domain
        ("Billing@SHOP.example", "apps/billing"),
        ("news@shop.example", "apps/shop"),  # *@domain
        ("news@eu.shop.example", "apps/eu"),  # *@*.domain
        ("news@x.de.shop.example", "apps/eu-de"),  # the longer subdomain suffix wins
    ],
)
async def test_the_most_specific_pattern_wins(registry: AccountRegistry, sender: str, expected: str) -> None:
    assert routed(Router(registry).route(sender)) == (expected, Via.SENDER)


async def test_unmatched_sender_goes_to_the_default_account_or_nowhere(registry: AccountRegistry) -> None:
    decision = Router(registry).route("ops@elsewhere.example")
    assert isinstance(decision, NoRoute) and decision.why is Why.UNMATCHED
    assert "no account may send for ops@elsewhere.example" in decision.detail
    assert routed(Router(registry, "apps/catchall").route("ops@elsewhere.example")) == ("apps/catchall", Via.DEFAULT)


async def test_a_default_account_still_applies_its_own_senders(registry: AccountRegistry) -> None:
    decision = Router(registry, "apps/billing").route("ops@elsewhere.example")
    assert isinstance(decision, NoRoute) and decision.why is Why.UNMATCHED


async def test_an_account_without_senders_claims_nothing(registry: AccountRegistry) -> None:
    """catchall allows any sender, but routing by sender never picks it: it would capture everything."""
    assert isinstance(Router(registry).route("x@unclaimed.example"), NoRoute)


async def test_a_logged_in_client_uses_its_account_and_only_its_senders(registry: AccountRegistry) -> None:
    router = Router(registry)
    assert routed(router.route("billing@shop.example", client_account="apps/shop")) == ("apps/shop", Via.CLIENT)
    refused = router.route("ops@eu.shop.example", client_account="apps/shop")
    assert isinstance(refused, NoRoute) and refused.why is Why.NOT_ALLOWED
    assert refused.detail == "sender ops@eu.shop.example is not allowed for account apps/shop"
    gone = router.route("billing@shop.example", client_account="apps/removed")
    assert isinstance(gone, NoRoute) and gone.why is Why.UNKNOWN_ACCOUNT


async def test_duplicate_claims_are_refused_and_reported_never_a_coin_toss(
    registry: AccountRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    registry.apply_snapshot(
        ConfigSnapshot(
            revision=2,
            accounts=[config("billing", ["billing@shop.example"]), config("other", ["billing@shop.example", "*@other.example"])],
        )
    )
    router = Router(registry)
    with caplog.at_level(logging.WARNING, logger="mailgate.relay.routing"):
        for _ in range(3):
            decision = router.route("billing@shop.example")
            assert isinstance(decision, NoRoute) and decision.why is Why.CONFLICT
    assert isinstance(decision, NoRoute) and decision.accounts == ("apps/billing", "apps/other")
    assert [r.getMessage() for r in caplog.records if "conflict" in r.getMessage()] == [
        "sender routing conflict: accounts apps/billing, apps/other claim the same sender pattern (first seen for "
        "billing@shop.example); messages whose best match is that pattern are refused until the configuration is fixed"
    ]
    assert registry.sender_conflicts("apps/billing") == ["billing@shop.example"]  # what the admin status shows
    assert routed(router.route("x@other.example")) == ("apps/other", Via.SENDER)  # unambiguous patterns still route


async def test_routing_follows_a_new_snapshot_at_once(registry: AccountRegistry) -> None:
    router = Router(registry)
    assert routed(router.route("news@shop.example"))[0] == "apps/shop"
    registry.apply_snapshot(ConfigSnapshot(revision=2, accounts=[config("newshop", ["*@shop.example"])]))
    assert routed(router.route("news@shop.example"))[0] == "apps/newshop"


async def test_http_callers_get_the_relay_outcome_types(registry: AccountRegistry) -> None:
    refused = Router(registry).route("ops@elsewhere.example")
    assert isinstance(refused, NoRoute)
    outcome = refused.as_outcome()
    assert isinstance(outcome, Refused) and outcome.reason is Reason.SENDER_NOT_ALLOWED and not outcome.retryable
