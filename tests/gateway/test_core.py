"""The plain objects under the HTTP layer: sender patterns, the token bucket, the account registry."""

from __future__ import annotations

import pytest

from mailgate.pool import SMTPPool
from mailgate.relay.accounts import AccountRegistry, InvalidAccount, RevisionConflict
from mailgate.relay.ratelimit import TokenBucket
from mailgate.relay.senders import SenderIndex, SenderMatcher
from mailgate.snapshot import AccountConfig, ConfigSnapshot
from tests.gateway.conftest import account

# --------------------------------------------------------------------------- senders


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("billing@shop.example", True),
        ("BILLING@Shop.Example", True),
        ("other@shop.example", False),
        ("x@news.example", True),
        ("x@sub.news.example", False),
        ("x@eu.mail.example", True),
        ("x@a.b.mail.example", True),
        ("x@mail.example", False),  # *.domain is subdomains only
        ("x@evilmail.example", False),
        ("x@bücher.example", True),  # IDN pattern, Unicode address
        ("x@xn--bcher-kva.example", True),  # same domain in punycode
        ("not-an-address", False),
    ],
)
def test_sender_patterns(address: str, allowed: bool) -> None:
    matcher = SenderMatcher(["billing@shop.example", "*@news.example", "*@*.mail.example", "*@bücher.example"])
    assert matcher.allows(address) is allowed


def test_no_patterns_allow_anyone() -> None:
    assert SenderMatcher([]).allows("anyone@anywhere.example")


def test_routing_prefers_exact_then_domain_then_longest_subdomain() -> None:
    index = SenderIndex(
        {
            "shop/exact": SenderMatcher(["ceo@corp.example"]),
            "shop/domain": SenderMatcher(["*@corp.example"]),
            "shop/sub": SenderMatcher(["*@*.corp.example"]),
            "shop/deeper": SenderMatcher(["*@*.eu.corp.example"]),
            "shop/any": SenderMatcher([]),
        }
    )
    assert index.route("ceo@corp.example") == ["shop/exact"]
    assert index.route("cfo@corp.example") == ["shop/domain"]
    assert index.route("x@us.corp.example") == ["shop/sub"]
    assert index.route("x@de.eu.corp.example") == ["shop/deeper"]
    assert index.route("x@elsewhere.example") == []


def test_conflicts_are_same_patterns_in_two_accounts() -> None:
    index = SenderIndex(
        {"a/one": SenderMatcher(["*@x.example", "me@y.example"]), "a/two": SenderMatcher(["*@X.example", "*@y.example"])}
    )
    assert index.conflicts("a/one") == ["*@x.example"]
    assert index.route("z@x.example") == ["a/one", "a/two"]


# --------------------------------------------------------------------------- token bucket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_bursts_a_tenth_then_refills_at_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(600, clock=clock)  # 10 per second, burst 60
    assert [bucket.take() for _ in range(60)] == [0.0] * 60
    wait = bucket.take()
    assert wait == pytest.approx(0.1)
    clock.now += wait
    assert bucket.take() == 0.0
    assert bucket.take() > 0


def test_bucket_reconfigure_keeps_earned_tokens_only_up_to_the_new_capacity() -> None:
    clock = Clock()
    bucket = TokenBucket(600, clock=clock)
    bucket.configure(60)  # capacity 6: the 60 saved tokens are clamped, not carried over
    assert [bucket.take() for _ in range(6)] == [0.0] * 6
    assert bucket.take() == pytest.approx(1.0)
    bucket.configure(None)
    assert bucket.take() == 0.0


def test_bucket_give_back() -> None:
    bucket = TokenBucket(10, clock=Clock())  # capacity 1
    assert bucket.take() == 0.0
    assert bucket.take() > 0
    bucket.give_back()
    assert bucket.take() == 0.0


# --------------------------------------------------------------------------- registry


def snapshot(revision: int, *accounts: dict) -> ConfigSnapshot:
    return ConfigSnapshot.model_validate({"revision": revision, "accounts": list(accounts)})


async def test_registry_applies_snapshots_to_the_pool() -> None:
    pool = SMTPPool()
    registry = AccountRegistry(pool, command_timeout=3.0)
    assert registry.apply_snapshot(snapshot(2, account(port=2525, pool={"maxConnections": 4, "ttlSeconds": 30})))
    settings = pool.settings("shop/billing")
    assert settings.limits is not None
    assert (settings.port, settings.limits.max_connections, settings.limits.ttl, settings.command_timeout) == (2525, 4, 30.0, 3.0)
    assert not registry.apply_snapshot(snapshot(2))  # same revision: no-op, the account stays
    assert registry.get("shop/billing") is not None
    with pytest.raises(RevisionConflict):
        registry.apply_snapshot(snapshot(1))
    # A share overrides the spec's cluster-wide limits; a share of 0 removes the pool (forwarding).
    registry.apply_snapshot(snapshot(3, account(port=2525, share={"maxConnections": 1, "messagesPerMinute": 5})))
    limits = pool.settings("shop/billing").limits
    assert limits is not None and limits.max_connections == 1
    assert registry.get("shop/billing").rate_per_minute == 5  # type: ignore[union-attr]
    registry.apply_snapshot(snapshot(4, account(port=2525, share={"maxConnections": 0, "peers": ["http://peer:8080"]})))
    assert pool.accounts() == []
    assert registry.get("shop/billing").forward_peers == ["http://peer:8080"]  # type: ignore[union-attr]
    registry.apply_snapshot(snapshot(5))
    assert registry.accounts() == {}
    await pool.close_all()


async def test_registry_keeps_the_rate_limiter_across_changes() -> None:
    registry = AccountRegistry(SMTPPool())
    registry.apply_snapshot(snapshot(1, account(port=25, rateLimit={"messagesPerMinute": 10})))
    limiter = registry.get("shop/billing").limiter  # type: ignore[union-attr]
    assert limiter.take() == 0.0
    registry.put_account(AccountConfig.model_validate(account(port=26, rateLimit={"messagesPerMinute": 20})), 2)
    assert registry.get("shop/billing").limiter is limiter  # type: ignore[union-attr]
    assert limiter.take() > 0  # the token spent before the change is not handed back by a reload
    assert limiter.capacity == 2


async def test_registry_refuses_a_bad_snapshot_as_a_whole() -> None:
    pool = SMTPPool()
    registry = AccountRegistry(pool)
    registry.apply_snapshot(snapshot(1, account(port=25)))
    forwarding_nowhere = account(name="lost", port=25, share={"maxConnections": 0})
    with pytest.raises(InvalidAccount) as error:
        registry.apply_snapshot(snapshot(2, account(port=26), forwarding_nowhere))
    assert error.value.key == "shop/lost"
    assert registry.revision == 1
    assert pool.settings("shop/billing").port == 25
    with pytest.raises(InvalidAccount):
        registry.apply_snapshot(snapshot(2, account(port=26), account(port=27)))  # listed twice
