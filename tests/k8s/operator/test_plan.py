"""The split of cluster-wide limits over gateways, and the caps that keep transitions under the limit.

Pure functions: no apiserver, no gateway. (Under tests/k8s only because that
is where the operator's tests live; nothing here uses the control plane.)
"""

from __future__ import annotations

import itertools
import random

import pytest

from mailgate.operator.plan import (
    NO_HOLD,
    GatewayPod,
    Hold,
    ResolvedAccount,
    cap,
    hold_of,
    plan_account,
    plan_all,
    shareholders,
    split,
)
from mailgate.snapshot import AccountShare, Credentials, config_digest
from mailgate.spec import SmtpAccountSpec

PORT = 8080


def account(connections: int = 3, rate: int | None = None, name: str = "billing", **spec: object) -> ResolvedAccount:
    raw: dict[str, object] = {
        "server": {"host": "smtp.example.com"},
        "pool": {"maxConnections": connections},
        "rateLimit": {"messagesPerMinute": rate} if rate is not None else {},
        **spec,
    }
    return ResolvedAccount(
        namespace="shop",
        name=name,
        generation=4,
        spec=SmtpAccountSpec.model_validate(raw),
        credentials=Credentials(username="u"),
    )


def gateways(count: int, ready: bool = True, prefix: str = "gw") -> list[GatewayPod]:
    return [GatewayPod(name=f"{prefix}-{index}", ip=f"10.0.0.{index + 1}", ready=ready) for index in range(count)]


@pytest.mark.parametrize(
    ("total", "parts", "expected"),
    [(3, 2, [2, 1]), (3, 5, [1, 1, 1, 0, 0]), (30, 3, [10, 10, 10]), (31, 3, [11, 10, 10]), (7, 1, [7]), (5, 0, [])],
)
def test_split_is_even_larger_first_and_sums_to_total(total: int, parts: int, expected: list[int]) -> None:
    assert split(total, parts) == expected


def test_three_connections_over_two_gateways() -> None:
    plan = plan_account(account(3), gateways(2), PORT)
    assert plan.effective.max_connections_per_gateway == [2, 1]
    assert all(not config.share.peers for config in plan.configs.values())  # type: ignore[union-attr]


def test_more_gateways_than_connections_forward_to_the_holders() -> None:
    plan = plan_account(account(3), gateways(5), PORT)
    assert plan.effective.max_connections_per_gateway == [1, 1, 1, 0, 0]
    holders = ["http://10.0.0.1:8080", "http://10.0.0.2:8080", "http://10.0.0.3:8080"]
    for name in ("gw-3", "gw-4"):
        share = plan.configs[name].share
        assert share is not None and share.max_connections == 0 and share.peers == holders
    assert plan.peers_for("gw-0") == holders[1:]


def test_rate_goes_to_the_same_holders_as_connections() -> None:
    plan = plan_account(account(3, rate=30), gateways(5), PORT)
    assert plan.effective.messages_per_minute_per_gateway == [10, 10, 10, 0, 0]
    assert plan.configs["gw-4"].share == AccountShare(max_connections=0, messages_per_minute=0, peers=plan.peers_for("gw-4"))


def test_a_rate_below_the_connection_count_limits_the_holders() -> None:
    """Two messages a minute over three gateways: a third holder would get a connection and no message."""
    plan = plan_account(account(3, rate=2), gateways(3), PORT)
    assert plan.effective.max_connections_per_gateway == [2, 1, 0]
    assert plan.effective.messages_per_minute_per_gateway == [1, 1, 0]


def test_unlimited_rate_stays_unlimited_everywhere() -> None:
    plan = plan_account(account(4), gateways(2), PORT)
    assert [config.share.messages_per_minute for config in plan.configs.values()] == [None, None]  # type: ignore[union-attr]
    assert plan.effective.messages_per_minute_per_gateway == []


def test_shares_follow_pod_names_not_discovery_order() -> None:
    forward = plan_account(account(3), gateways(3), PORT)
    shuffled = gateways(3)
    random.Random(1).shuffle(shuffled)
    backward = plan_account(account(3), shuffled, PORT)
    assert forward.configs == backward.configs


def test_a_new_gateway_does_not_shuffle_the_existing_shares() -> None:
    before = plan_account(account(5), gateways(2), PORT)
    after = plan_account(account(5), [*gateways(2), GatewayPod("gw-9", "10.0.0.9", True)], PORT)
    assert before.effective.max_connections_per_gateway == [3, 2]
    assert after.effective.max_connections_per_gateway == [2, 2, 1]


def test_only_ready_gateways_hold_shares_and_the_unready_forward() -> None:
    pods = [*gateways(2), GatewayPod("gw-new", "10.0.0.50", ready=False)]
    plan = plan_account(account(3), pods, PORT)
    assert plan.configs["gw-new"].share == AccountShare(max_connections=0, peers=["http://10.0.0.1:8080", "http://10.0.0.2:8080"])
    assert [g.name for g in shareholders(pods)] == ["gw-0", "gw-1"]


def test_a_fresh_deployment_with_no_ready_gateway_splits_over_all_of_them() -> None:
    plan = plan_account(account(3), gateways(3, ready=False), PORT)
    assert plan.effective.max_connections_per_gateway == [1, 1, 1]


def test_ipv6_pods_get_bracketed_urls() -> None:
    plan = plan_account(account(1), [GatewayPod("a", "fd00::1", True), GatewayPod("b", "fd00::2", True)], PORT)
    assert plan.configs["b"].share.peers == ["http://[fd00::1]:8080"]  # type: ignore[union-attr]


@pytest.mark.parametrize("connections", [1, 2, 3, 7, 100])
@pytest.mark.parametrize("rate", [None, 1, 5, 30, 1000])
@pytest.mark.parametrize("count", [1, 2, 3, 5, 8])
def test_the_sum_never_exceeds_the_spec(connections: int, rate: int | None, count: int) -> None:
    plan = plan_account(account(connections, rate=rate), gateways(count), PORT)
    assert sum(plan.effective.max_connections_per_gateway) == connections  # all of it, and no more
    if rate is not None:
        assert sum(plan.effective.messages_per_minute_per_gateway) == rate
    for config in plan.configs.values():
        assert config.share is not None
        if rate is not None:  # a holder can always send: no connections without messages, or the reverse
            assert (config.share.max_connections > 0) == (config.share.messages_per_minute != 0)
        assert (config.share.max_connections == 0) == bool(config.share.peers)


def test_digests_differ_per_share_and_match_the_snapshot_function() -> None:
    plan = plan_account(account(3), gateways(2), PORT)
    assert plan.digests["gw-0"] != plan.digests["gw-1"]
    assert plan.digests["gw-0"] == config_digest(plan.configs["gw-0"])


def test_plans_for_many_accounts_by_key() -> None:
    pods = gateways(2)
    plans = plan_all([account(2, name="b"), account(1, name="a")], pods, PORT)
    assert sorted(plans) == ["shop/a", "shop/b"]
    assert plans["shop/a"].configs["gw-1"].share == AccountShare(max_connections=0, peers=["http://10.0.0.1:8080"])
    assert plans["shop/b"].effective.max_connections_per_gateway == [1, 1]


def test_a_gateway_removed_hands_its_share_to_the_others() -> None:
    three = plan_account(account(3), gateways(3), PORT)
    two = plan_account(account(3), gateways(2), PORT)
    assert three.effective.max_connections_per_gateway == [1, 1, 1]
    assert two.effective.max_connections_per_gateway == [2, 1]


# ----------------------------------------------------------------------------- caps during transitions


def test_a_decrease_is_never_capped() -> None:
    config = plan_account(account(3), gateways(3), PORT).configs["gw-0"]  # share 1
    assert cap(config, own=Hold(2, None), others=[Hold(3, None), Hold(3, None)], peers=[]) is config


def test_an_increase_waits_for_the_others_to_give_back() -> None:
    """3 connections, gateways at [2, 1]; a third arrives and should get 1 while gw-0 drops to 1."""
    plan = plan_account(account(3), gateways(3), PORT)
    new = plan.configs["gw-2"]
    capped = cap(new, own=NO_HOLD, others=[Hold(2, None), Hold(1, None)], peers=plan.peers_for("gw-2"))
    assert capped.share == AccountShare(max_connections=0, peers=plan.peers_for("gw-2"))
    after = cap(new, own=NO_HOLD, others=[Hold(1, None), Hold(1, None)], peers=plan.peers_for("gw-2"))
    assert after is new


def test_a_partial_increase_takes_what_is_free() -> None:
    config = plan_account(account(4), gateways(1), PORT).configs["gw-0"]  # wants 4
    capped = cap(config, own=Hold(1, None), others=[Hold(2, None)], peers=[])
    assert capped.share == AccountShare(max_connections=2)


def test_an_overcommitted_cluster_does_not_take_from_the_gateway_itself() -> None:
    config = plan_account(account(4), gateways(1), PORT).configs["gw-0"]  # wants 4
    capped = cap(config, own=Hold(2, None), others=[Hold(3, None)], peers=[])
    assert capped.share == AccountShare(max_connections=2)


def test_rate_increases_are_capped_like_connections() -> None:
    config = plan_account(account(2, rate=20), gateways(2), PORT).configs["gw-0"]  # 1 conn, 10/min
    capped = cap(config, own=Hold(1, 5), others=[Hold(1, 13)], peers=[])
    assert capped.share == AccountShare(max_connections=1, messages_per_minute=7)


def test_a_rate_capped_to_zero_forwards() -> None:
    config = plan_account(account(2, rate=20), gateways(2), PORT).configs["gw-1"]
    capped = cap(config, own=Hold(1, 0), others=[Hold(1, 20)], peers=["http://p:8080"])
    assert capped.share == AccountShare(max_connections=0, messages_per_minute=0, peers=["http://p:8080"])


def test_an_unlimited_other_counts_as_the_whole_rate() -> None:
    config = plan_account(account(2, rate=20), gateways(2), PORT).configs["gw-0"]
    capped = cap(config, own=Hold(0, 0), others=[Hold(1, None)], peers=["http://p:8080"])
    assert capped.share is not None and capped.share.max_connections == 0


def test_holds_of_configs() -> None:
    plan = plan_account(account(3, rate=30), gateways(2), PORT)
    assert hold_of(plan.configs["gw-0"]) == Hold(2, 15)
    whole = plan.configs["gw-0"].model_copy(update={"share": None})
    assert hold_of(whole) == Hold(3, 30)
    assert Hold(2, 5).union(Hold(1, 9)) == Hold(2, 9)
    assert Hold(2, 5).union(Hold(1, None)) == Hold(2, None)


def test_any_order_of_pushes_stays_under_the_limit() -> None:
    """Simulate a transition between two splits: whatever order the gateways apply their
    (capped) configs in, the sum of what they hold never exceeds the limit, and repeating
    the process converges to the new split."""
    limit = 5
    before = plan_account(account(limit, rate=10), gateways(2), PORT)
    pods = gateways(4)
    after = plan_account(account(limit, rate=10), pods, PORT)
    for order in itertools.permutations([g.name for g in pods]):
        held = {name: hold_of(before.configs[name]) if name in before.configs else NO_HOLD for name in order}
        for _ in range(4):
            for name in order:
                others = [hold for other, hold in held.items() if other != name]
                config = cap(after.configs[name], held[name], others, after.peers_for(name))
                held[name] = hold_of(config)  # applied: the gateway now holds exactly this
                assert sum(h.max_connections for h in held.values()) <= limit
                assert sum(h.messages_per_minute or 0 for h in held.values()) <= 10
        assert [held[g.name].max_connections for g in pods] == after.effective.max_connections_per_gateway
