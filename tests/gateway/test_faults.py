"""Faults and configurations the schema lets through but that cannot work (issue 8).

Each test breaks one thing for real (DNS, TLS, the upstream's behaviour) and
checks what a user sees: a precise, retryable-or-not problem, the reason in
the admin status, a gateway that stays ready, and other accounts unharmed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.gateway.conftest import GatewayFactory, GatewayHandle, account
from tests.smtp_servers import StallServer, TestCA, Upstream

pytestmark = pytest.mark.timeout(120)


async def _status(gw: GatewayHandle, key: str) -> dict[str, Any]:
    response = await gw.admin("GET", "/v1/status")
    body = await response.json()
    return dict(body["accounts"][key])


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 20.0) -> None:
    """Poll an async condition until it holds (a condition with a deadline, never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def _ready(gw: GatewayHandle) -> int:
    async with gw.http.get(f"{gw.url}/readyz") as response:
        return response.status


async def test_unresolvable_host_is_a_clear_503_and_the_gateway_stays_ready(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(upstream_timeout=5.0)
    await gw.configure(account(host="smtp.does-not-exist.invalid", port=587))
    status, body, _ = await gw.send()
    assert status == 503 and body["type"].endswith("/upstream-unavailable"), body
    assert body["retryable"] is True
    state = await _status(gw, "shop/billing")
    assert state["healthy"] is False
    assert state["lastError"], state
    assert await _ready(gw) == 200


async def test_implicit_tls_to_a_plaintext_server_fails_with_a_reason(gw: GatewayHandle, upstream: Upstream) -> None:
    config = account(upstream)
    config["spec"]["server"]["tls"] = "implicit"
    await gw.configure(config)
    status, body, _ = await gw.send()
    assert status in (503, 504), body
    assert body["retryable"] is True
    assert (await _status(gw, "shop/billing"))["healthy"] is False
    assert upstream.messages == []


async def test_starttls_required_but_not_offered_never_sends_in_plaintext(gw: GatewayHandle, upstream: Upstream) -> None:
    config = account(upstream)
    config["spec"]["server"]["tls"] = "starttls"
    await gw.configure(config)
    status, body, _ = await gw.send()
    assert status == 503, body
    assert "STARTTLS" in (await _status(gw, "shop/billing"))["lastError"]
    assert upstream.messages == []


async def test_untrusted_certificate_is_refused_and_reported(gw: GatewayHandle, upstream_factory: Any) -> None:
    up = upstream_factory(tls="implicit")
    config = account(up)
    config["spec"]["server"]["caCertificate"] = TestCA().ca_pem  # a CA that did not sign the server's certificate
    await gw.configure(config)
    status, body, _ = await gw.send()
    assert status == 503, body
    assert "certificate" in (await _status(gw, "shop/billing"))["lastError"].lower()
    assert up.messages == []


async def test_failed_auth_is_reported_with_its_reason(gw: GatewayHandle, upstream_factory: Any) -> None:
    up = upstream_factory(tls="starttls", users={"billing": "right"})
    await gw.configure(account(up, password="sentinel-wrong-password"))
    status, body, _ = await gw.send()
    assert status == 503 and body["type"].endswith("/upstream-auth-failed")
    state = await _status(gw, "shop/billing")
    assert state["healthy"] is False
    assert "535" in state["lastError"]
    assert "sentinel-wrong-password" not in str(state) + str(body)


async def test_upstream_dropping_mid_data_is_never_a_false_success(gw: GatewayHandle, upstream: Upstream) -> None:
    """A hang-up on the DATA command, before any text: nothing was sent, so "retry" is the truth."""
    upstream.drop_at_data = True
    await gw.configure(account(upstream))
    results = await asyncio.gather(*(gw.send() for _ in range(5)))
    assert all(status == 503 and body["retryable"] for status, body, _ in results), results
    assert upstream.messages == []
    upstream.drop_at_data = False
    status, _, _ = await gw.send()
    assert status == 200
    assert len(upstream.messages) == 1


async def test_upstream_dropping_in_the_text_is_delivery_unknown(gw: GatewayHandle, upstream: Upstream) -> None:
    """A hang-up after the 354 and part of the text: the gateway cannot know what the upstream kept.

    It must not say 200, and must not say "retry, nothing was sent" either.
    """
    upstream.drop_in_content = True
    await gw.configure(account(upstream))
    results = await asyncio.gather(*(gw.send() for _ in range(3)))
    assert len(upstream.partial) == 3, "the fault must cut the text, not the DATA command"
    for status, body, _ in results:
        assert status == 502 and body["type"].endswith("/delivery-unknown"), body
        assert body["retryable"] is False
    upstream.drop_in_content = False
    assert (await gw.send())[0] == 200


async def test_upstream_dropping_after_the_dot_is_delivery_unknown_never_a_retry(gw: GatewayHandle, upstream: Upstream) -> None:
    """The upstream took the message and hung up before its 250: each message is there once, none is retried."""
    upstream.drop_after_dot = True
    await gw.configure(account(upstream))
    results = await asyncio.gather(*(gw.send(subject=f"m{i}") for i in range(3)))
    for status, body, _ in results:
        assert status == 502 and body["type"].endswith("/delivery-unknown"), body
        assert body["retryable"] is False
    received = upstream.wait_messages(3)
    subjects = sorted(line for m in received for line in m.data.split(b"\r\n") if line.startswith(b"Subject:"))
    assert subjects == [b"Subject: m0", b"Subject: m1", b"Subject: m2"], "each message reached the upstream once"


async def test_421_storm_then_recovery(gw: GatewayHandle, upstream: Upstream) -> None:
    """Every session ends in 421 and a hang-up for a while: all answers are retryable 503s, then it heals by itself.

    The upstream hangs up after each 421 as real servers do, and the number of
    sessions the gateway opens stays bounded: one per request at most, never
    more than the pool's limit at once.
    """
    upstream.close_after_421 = True
    upstream.rcpt_replies["rcpt@example.org"] = "421 4.7.0 Try again later"
    await gw.configure(account(upstream, pool={"maxConnections": 3}))
    storm = await asyncio.gather(*(gw.send() for _ in range(30)))
    assert {status for status, _, _ in storm} == {503}
    assert all(body["retryable"] and "Retry-After" in response.headers for _, body, response in storm)
    assert all(body["upstream"]["code"] == 421 for _, body, _ in storm), "the 421 itself, read before the hang-up"
    opened = upstream.counters.sessions_total
    assert 1 <= opened <= 30, f"30 requests opened {opened} sessions"
    assert upstream.counters.hangups_after_421 == opened, "the upstream hung up on every session"
    assert upstream.sessions_peak <= 3
    del upstream.rcpt_replies["rcpt@example.org"]
    after = await asyncio.gather(*(gw.send() for _ in range(10)))
    assert {status for status, _, _ in after} == {200}
    assert len(upstream.messages) == 10
    assert upstream.sessions_peak <= 3


async def test_a_stalled_upstream_does_not_hold_up_another_account(
    gateway_factory: GatewayFactory, upstream: Upstream, stall_server: StallServer
) -> None:
    """Account B's sends all complete while every send of account A is still stuck on A's silent upstream.

    Isolation is asserted by behaviour, not by latency: a lock shared between
    accounts would keep B's sends queued behind A's until A's time out.
    """
    gw = await gateway_factory(upstream_timeout=60.0)  # A stays stuck for the whole test
    await gw.configure(
        account(upstream, name="healthy"),
        account(name="stalled", port=stall_server.port, pool={"maxConnections": 4, "acquireTimeoutSeconds": 60}),
    )
    stalled = [asyncio.create_task(gw.send(account_key="shop/stalled")) for _ in range(16)]

    async def all_stuck() -> bool:
        pool = (await _status(gw, "shop/stalled"))["pool"]
        return pool is not None and (pool["opening"], pool["waiting"]) == (4, 12)

    await _until(all_stuck, "every stalled send to be connecting (4) or queued behind those (12)")
    try:
        beside = await asyncio.gather(*(gw.send(account_key="shop/healthy") for _ in range(20)))

        assert [status for status, _, _ in beside] == [200] * 20
        assert not any(task.done() for task in stalled), "the stalled account answered: the fault was not in place"
        assert await all_stuck()
        assert len(upstream.messages) == 20
    finally:
        for task in stalled:
            task.cancel()
        await asyncio.gather(*stalled, return_exceptions=True)
