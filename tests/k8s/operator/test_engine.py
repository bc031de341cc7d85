"""The engine and its push loops against real gateways, in this process, without an apiserver.

The gateways run in the test's event loop, so their state can be read in one
synchronous step: a watcher that reads every gateway between two awaits sees
a true instant of the whole system, and checks after each scheduling step
that the shares of an account never add up to more than its limits.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from mailgate.gateway.app import Gateway, GatewayOptions
from mailgate.gateway.auth import AllowAnyone
from mailgate.operator.admin import AdminClient, GatewayRejected
from mailgate.operator.engine import Engine, PodInfo
from mailgate.operator.metrics import OperatorMetrics
from mailgate.operator.syncer import _refused_keys
from tests.k8s.cluster import free_ports

TOKEN = "engine-test-token"
SECRETS = {("shop", "creds"): {"username": "app", "password": "pw"}}


def lookup(namespace: str, name: str) -> Any:
    return SECRETS.get((namespace, name))


def body(name: str, generation: int = 1, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "shop", "name": name, "generation": generation, "uid": f"uid-{name}"},
        "spec": {
            "server": {"host": "127.0.0.1", "port": 9, "tls": "none"},
            "auth": {"method": "login", "secretRef": {"name": "creds"}},
            **spec,
        },
    }


async def until(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
    return result


class Cluster:
    """In-process gateways on 127.a.b.<n> sharing one port pair, and an Engine pushing to them."""

    def __init__(self, engine: Engine, metrics: OperatorMetrics, ports: tuple[int, int]) -> None:
        self.engine = engine
        self.metrics = metrics
        self.send_port, self.admin_port = ports
        self.net = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}"
        self.gateways: dict[str, Gateway] = {}
        self.pods: dict[str, PodInfo] = {}

    async def add(self, name: str, index: int, *, ready: bool = True, listening: bool = True) -> None:
        ip = f"{self.net}.{index}"
        if listening:
            gateway = Gateway(
                AllowAnyone(),
                GatewayOptions(host=ip, port=self.send_port, admin_port=self.admin_port, admin_token=TOKEN),
            )
            await gateway.start()
            self.gateways[name] = gateway
        self.pods[name] = PodInfo(f"uid-{name}", name, ip, running=True, ready=ready, terminating=False)
        self.engine.set_pods(self.pods.values())

    def set_ready(self, name: str, ready: bool) -> None:
        pod = self.pods[name]
        self.pods[name] = PodInfo(pod.uid, pod.name, pod.ip, pod.running, ready, pod.terminating)
        self.engine.set_pods(self.pods.values())

    async def remove(self, name: str) -> None:
        """As in a cluster: the process ends before the Pod object goes."""
        gateway = self.gateways.pop(name, None)
        if gateway is not None:
            await gateway.stop()
        del self.pods[name]
        self.engine.set_pods(self.pods.values())

    def shares(self, key: str) -> dict[str, tuple[int, int | None]]:
        result = {}
        for name, gateway in self.gateways.items():
            account = gateway.registry.get(key)
            if account is not None and account.config.share is not None:
                result[name] = (account.config.share.max_connections, account.config.share.messages_per_minute)
        return result

    def synced(self, key: str) -> bool:
        inputs = self.engine.status_inputs(key)
        return inputs is not None and inputs.total > 0 and inputs.synced == inputs.total


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    metrics = OperatorMetrics()
    async with AdminClient(TOKEN, 0) as client:
        ports = tuple(free_ports(2))
        client._port = ports[1]
        engine = Engine(client=client, send_port=ports[0], resync_seconds=30.0, metrics=metrics)
        engine.expect([])
        cluster = Cluster(engine, metrics, ports)  # type: ignore[arg-type]
        try:
            yield cluster
        finally:
            await engine.close()
            for gateway in cluster.gateways.values():
                await gateway.stop()


async def watching(cluster: Cluster, key: str, limit: int, rate: int, steps: Callable[[], Awaitable[None]]) -> int:
    """Run ``steps`` while checking the sum of the shares after every scheduling step; returns the checks made."""
    violations: list[dict[str, Any]] = []
    checks = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal checks
        deadline = time.monotonic() + 60
        while not done.is_set() and time.monotonic() < deadline:
            shares = cluster.shares(key)  # no await inside: one instant of every gateway
            if sum(c for c, _ in shares.values()) > limit or sum(r or 0 for _, r in shares.values()) > rate:
                violations.append(shares)
            checks += 1
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    try:
        await steps()
    finally:
        done.set()
        await watcher
    assert not violations, violations[:3]
    return checks


async def test_shares_move_between_real_gateways_without_ever_exceeding_the_limits(cluster: Cluster) -> None:
    key = "shop/split"
    await cluster.add("gw-a", 1)
    await cluster.add("gw-b", 2)
    await cluster.engine.upsert(body("split", pool={"maxConnections": 5}, rateLimit={"messagesPerMinute": 10}), lookup)
    await until(lambda: cluster.shares(key) == {"gw-a": (3, 5), "gw-b": (2, 5)}, "[3, 2] over two gateways")

    async def steps() -> None:
        await cluster.add("gw-c", 3, ready=False)
        await until(lambda: cluster.shares(key).get("gw-c") == (0, 0), "the unready pod to forward")
        cluster.set_ready("gw-c", True)
        await until(lambda: cluster.shares(key) == {"gw-a": (2, 4), "gw-b": (2, 3), "gw-c": (1, 3)}, "[2, 2, 1]")
        await cluster.add("gw-d", 4)
        await until(lambda: list(cluster.shares(key).values()) == [(2, 3), (1, 3), (1, 2), (1, 2)], "[2, 1, 1, 1]")
        await cluster.remove("gw-a")
        await until(lambda: list(cluster.shares(key).values()) == [(2, 4), (2, 3), (1, 3)], "[2, 2, 1] without gw-a")
        cluster.set_ready("gw-b", False)
        await until(lambda: cluster.shares(key) == {"gw-b": (0, 0), "gw-c": (3, 5), "gw-d": (2, 5)}, "gw-b forwards")
        await cluster.engine.upsert(
            body("split", generation=2, pool={"maxConnections": 2}, rateLimit={"messagesPerMinute": 4}), lookup
        )
        await until(lambda: cluster.shares(key) == {"gw-b": (0, 0), "gw-c": (1, 2), "gw-d": (1, 2)}, "a lower limit")

    checks = await watching(cluster, key, limit=5, rate=10, steps=steps)
    assert checks > 100
    peers = cluster.gateways["gw-b"].registry.get(key).config.share.peers  # type: ignore[union-attr]
    assert peers == [f"http://{cluster.net}.3:{cluster.send_port}", f"http://{cluster.net}.4:{cluster.send_port}"]


async def test_an_unreachable_pod_delays_only_itself(cluster: Cluster) -> None:
    await cluster.add("gw-dead", 1, listening=False)  # a Running pod nothing answers for
    await cluster.add("gw-live", 2)
    await cluster.engine.upsert(body("mail", pool={"maxConnections": 4}), lookup)
    await until(lambda: "gw-live" in cluster.shares("shop/mail"), "the live gateway to be served")
    inputs = cluster.engine.status_inputs("shop/mail")
    assert inputs is not None and (inputs.synced, inputs.total) == (1, 2)
    # gw-live may use only what gw-dead cannot hold: it has never answered, so it may hold anything.
    assert cluster.shares("shop/mail")["gw-live"][0] <= 2
    await until(lambda: cluster.metrics.push_failures.labels(reason="unreachable")._value.get() >= 1, "a failure")
    await cluster.remove("gw-dead")
    await until(lambda: cluster.shares("shop/mail") == {"gw-live": (4, None)}, "the whole limit once the pod is gone")


async def test_deleting_waits_for_every_gateway_and_a_new_engine_adopts_what_is_served(cluster: Cluster) -> None:
    await cluster.add("gw-a", 1)
    await cluster.add("gw-b", 2)
    await cluster.engine.upsert(body("stay", pool={"maxConnections": 2}), lookup)
    await cluster.engine.upsert(body("leave"), lookup)
    await until(lambda: cluster.synced("shop/stay") and cluster.synced("shop/leave"), "both accounts everywhere")

    cluster.engine.start_deleting("shop/leave")
    assert await cluster.engine.wait_removed("shop/leave", timeout=10) == []
    assert all(gateway.registry.get("shop/leave") is None for gateway in cluster.gateways.values())
    cluster.engine.forget("shop/leave")
    revisions = {name: gateway.registry.revision for name, gateway in cluster.gateways.items()}
    await cluster.engine.close()

    # An operator restart: a new engine reads what the gateways serve and pushes nothing that matches.
    metrics = OperatorMetrics()
    async with AdminClient(TOKEN, cluster.admin_port) as client:
        engine = Engine(client=client, send_port=cluster.send_port, resync_seconds=30.0, metrics=metrics)
        cluster.engine = engine
        engine.set_pods(cluster.pods.values())
        engine.expect(["shop/stay"])
        await engine.upsert(body("stay", pool={"maxConnections": 2}), lookup)
        try:
            await until(lambda: cluster.synced("shop/stay"), "the restarted engine to see the account served")
        finally:
            await engine.close()
    assert {name: gateway.registry.revision for name, gateway in cluster.gateways.items()} == revisions
    assert metrics.push_seconds.labels(kind="account")._sum.get() == 0


def test_the_accounts_a_refused_snapshot_names_are_found() -> None:
    keys = ["a/one", "a/two", "b/three"]
    by_key = GatewayRejected(400, "invalid", ("accounts[a/two]",))
    by_index = GatewayRejected(400, "invalid", ("accounts.2.spec.server.host", "revision"))
    assert by_key.invalid and _refused_keys(by_key, keys) == {"a/two"}
    assert _refused_keys(by_index, keys) == {"b/three"}
    assert _refused_keys(GatewayRejected(400, "invalid", ("accounts.7",)), keys) == set()
    # What a gateway of this release writes (mailgate.validation paths): the index in brackets.
    assert _refused_keys(GatewayRejected(400, "invalid", ("accounts[1].spec.server.host",)), keys) == {"a/two"}
    assert _refused_keys(GatewayRejected(400, "invalid", ("accounts[9]",)), keys) == set()


def pushes(cluster: Cluster, kind: str) -> float:
    return cluster.metrics.registry.get_sample_value("mailgate_operator_push_duration_seconds_count", {"kind": kind}) or 0.0


async def test_a_burst_of_new_accounts_costs_in_proportion_to_the_burst(cluster: Cluster) -> None:
    """Accounts created a hundred at a time against 1,000 served go out one by one: a full snapshot is worth it
    only when a good share of what a pod serves changed (it re-sends everything, and the pod rebuilds it)."""
    await cluster.add("gw-1", 1)
    for n in range(1000):
        await cluster.engine.upsert(body(f"base-{n:04d}"), lookup)
    await until(lambda: all(cluster.synced(f"shop/base-{n:04d}") for n in range(1000)), "1,000 accounts served", timeout=60)
    full = pushes(cluster, "full")
    for n in range(100):
        await cluster.engine.upsert(body(f"burst-{n:03d}"), lookup)
    await until(lambda: all(cluster.synced(f"shop/burst-{n:03d}") for n in range(100)), "the burst served", timeout=60)
    assert pushes(cluster, "full") == full
    assert pushes(cluster, "account") >= 100
