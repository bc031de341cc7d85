"""Every setting changes live through the admin API while 50 clients keep sending: no request fails."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.gateway.conftest import GatewayHandle, account
from tests.pool.support import eventually
from tests.smtp_servers import Upstream

CLIENTS = 50
STEP_REQUESTS = 1500  # bounds the load of each step, whatever happens: the clients pause until the next change
MAX_SECONDS = 30.0


def variant(upstream: Upstream, user: str, password: str, **spec: Any) -> dict[str, Any]:
    payload = account(upstream, **spec)
    payload["spec"]["auth"] = {"method": "login", "secretRef": {"name": "billing-smtp"}}
    payload["credentials"] = {"username": user, "password": password}
    return payload


async def test_every_setting_changes_under_load_without_a_failed_request(
    gw: GatewayHandle, upstream_factory: Any
) -> None:
    up = upstream_factory(tls="starttls", users={"user-a": "pass-a", "user-b": "pass-b"})
    base: dict[str, Any] = {"pool": {"maxConnections": 2, "acquireTimeoutSeconds": 10}}
    await gw.configure(variant(up, "user-a", "pass-a", **base))
    changes: list[dict[str, Any]] = [
        {"pool": {"maxConnections": 4, "acquireTimeoutSeconds": 10}},
        {"pool": {"maxConnections": 1, "acquireTimeoutSeconds": 10}},
        {"pool": {"maxConnections": 3, "ttlSeconds": 1, "healthCheckAfterIdleSeconds": 0, "acquireTimeoutSeconds": 10}},
        {"pool": {"maxConnections": 3, "idleTimeoutSeconds": 1, "healthCheckAfterIdleSeconds": 0, "acquireTimeoutSeconds": 10}},
        {"pool": {"maxConnections": 2, "maxMessagesPerConnection": 5, "acquireTimeoutSeconds": 10}},
        {**base, "rateLimit": {"messagesPerMinute": 600000}},
        {**base, "rateLimit": {"messagesPerMinute": 900000}},
        {**base, "senders": ["*@shop.example"]},
        {**base, "senders": ["app@shop.example", "*@*.shop.example"]},
        {**base, "maxMessageBytes": 65536},
    ]
    statuses: list[int] = []
    failures: list[Any] = []
    stop = asyncio.Event()
    deadline = time.monotonic() + MAX_SECONDS
    # A budget per step, not one for the whole test: on a fast machine a single bound ran out
    # while the test waited for a TTL expiry, and the steps after it saw no load at all.
    budget = {"left": STEP_REQUESTS}
    refilled = asyncio.Event()

    async def client() -> None:
        while not stop.is_set() and time.monotonic() < deadline:
            if budget["left"] <= 0:
                refilled.clear()
                await refilled.wait()
                continue
            budget["left"] -= 1
            status, body, _ = await gw.send()
            statuses.append(status)
            if status != 200:
                failures.append(body)

    async def configure(user: str, password: str, **spec: Any) -> None:
        await gw.configure(variant(up, user, password, **spec))
        budget["left"] = STEP_REQUESTS
        refilled.set()

    def pool_stats() -> dict[str, Any]:
        return gw.gateway.pool.stats()["shop/billing"]

    async def progressed(by: int) -> None:
        target = len(up.messages) + by
        await eventually(lambda: len(up.messages) >= target or bool(failures), timeout=10, what=f"{by} more messages")

    clients = [asyncio.create_task(client()) for _ in range(CLIENTS)]
    try:
        await progressed(30)
        for change in changes:
            await configure("user-a", "pass-a", **change)
            await progressed(30)
            if change["pool"].get("ttlSeconds") == 1:  # let sessions reach their TTL under load
                await eventually(lambda: pool_stats()["closed"].get("ttl", 0) > 0 or bool(failures), what="a TTL expiry")
        # Credentials rotate: in-flight sends finish on old sessions, new sessions log in with the new ones.
        await configure("user-b", "pass-b", **base)
        await progressed(60)
    finally:
        stop.set()
        refilled.set()
        await asyncio.gather(*clients)

    assert failures == []
    assert len(up.messages) == len(statuses)
    assert up.messages[-1].login == "user-b"
    assert {m.login for m in up.messages} == {"user-a", "user-b"}
    closed = pool_stats()["closed"]
    assert closed.get("reconfigure", 0) > 0  # old sessions (old limits, old password) were retired, not reused
    assert closed.get("ttl", 0) > 0
    assert closed.get("max_messages", 0) > 0
    assert up.counters.noops > 0  # healthCheckAfterIdleSeconds 0 took effect
