"""Live changes: credential rotation, raised and lowered limits, removed accounts."""

from __future__ import annotations

import asyncio
import time

import pytest

from mailgate.pool import SMTPPool, UnknownAccount
from tests.pool.support import MESSAGE, RCPT, SENDER, account_stats, eventually, limits, pool_size
from tests.smtp_servers import settings_for

pytestmark = pytest.mark.timeout(30)


async def test_password_rotation_uses_a_new_session_and_drains_old_ones(pool: SMTPPool, upstream_factory) -> None:
    upstream = upstream_factory(tls="starttls", users={"user": "old-password"})
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=2)))
    checked_out = await pool.acquire("a")
    await pool.send("a", SENDER, [RCPT], MESSAGE)  # a second, now idle, old session
    assert account_stats(pool, "a")["idle"] == 1

    upstream.users["user"] = "new-password"
    pool.reconfigure("a", settings_for(upstream, password="new-password", limits=limits(max_connections=2)))

    assert account_stats(pool, "a")["closed"] == {"reconfigure": 1}, "the idle old session closes at once"
    result = await pool.send("a", SENDER, [RCPT], MESSAGE)
    assert result.connection_reused is False
    assert upstream.counters.logins[-1] == ("PLAIN", "user", "new-password")
    assert [secret for _, _, secret in upstream.counters.logins] == ["old-password", "old-password", "new-password"]

    await pool.release(checked_out)  # an in-flight old session is closed when it comes back
    stats = account_stats(pool, "a")
    assert stats["closed"] == {"reconfigure": 2} and stats["idle"] == 1
    await eventually(lambda: upstream.sessions_open == 1, what="old sessions to end upstream")


async def test_same_identity_keeps_sessions_and_applies_new_limits(pool: SMTPPool, upstream) -> None:
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=2)))
    await pool.send("a", SENDER, [RCPT], MESSAGE)

    pool.reconfigure("a", settings_for(upstream, limits=limits(max_connections=5, ttl=120.0)))
    result = await pool.send("a", SENDER, [RCPT], MESSAGE)

    assert result.connection_reused is True
    assert account_stats(pool, "a")["max_connections"] == 5
    assert upstream.counters.sessions_total == 1


async def test_raising_the_limit_lets_waiters_in_at_once(pool: SMTPPool, upstream) -> None:
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1)))
    held = await pool.acquire("a")
    waiters = [asyncio.create_task(pool.acquire("a", timeout=None)) for _ in range(3)]
    await eventually(lambda: account_stats(pool, "a")["waiting"] == 3, what="three waiters")

    pool.reconfigure("a", settings_for(upstream, limits=limits(max_connections=4)))
    granted = await asyncio.wait_for(asyncio.gather(*waiters), timeout=5)

    assert len({id(conn) for conn in [held, *granted]}) == 4, "each waiter got its own new session"
    assert account_stats(pool, "a")["active"] == 4
    for conn in [held, *granted]:
        await pool.release(conn)


async def test_shrinking_the_limit_under_load_never_exceeds_it_once_drained(pool: SMTPPool, upstream) -> None:
    upstream.data_delay = 0.005  # keep sessions busy so that all four are in use
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=4, acquire_timeout=None)))
    stop = asyncio.Event()
    deadline = time.monotonic() + 15

    async def sender() -> int:
        sent = 0
        while not stop.is_set() and sent < 500 and time.monotonic() < deadline:
            await pool.send("a", SENDER, [RCPT], MESSAGE)
            sent += 1
        return sent

    senders = [asyncio.create_task(sender()) for _ in range(12)]
    await eventually(
        lambda: upstream.sessions_peak >= 4, what="four busy sessions", detail=lambda: (upstream.counters, pool.stats())
    )

    pool.reconfigure("a", settings_for(upstream, limits=limits(max_connections=1, acquire_timeout=None)))
    await eventually(lambda: pool_size(pool, "a") <= 1 and upstream.sessions_open <= 1, what="surplus sessions to drain")
    with upstream.counters.lock:  # from now on the upstream must never see more than one session
        upstream.counters.sessions_peak = upstream.counters.sessions_open
    received = len(upstream.messages)
    await eventually(lambda: len(upstream.messages) >= received + 50, what="50 more messages after the drain")
    stop.set()
    sent = await asyncio.gather(*senders)  # no send failed: a failure would raise here

    assert upstream.sessions_peak <= 1
    assert sum(sent) == len(upstream.wait_messages(sum(sent)))
    stats = account_stats(pool, "a")
    assert stats["closed"].get("reconfigure", 0) >= 3 and pool_size(pool, "a") <= 1


async def test_removed_account_fails_waiters_and_closes_its_sessions(pool: SMTPPool, upstream) -> None:
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1)))
    held = await pool.acquire("a")
    waiting = asyncio.create_task(pool.acquire("a", timeout=None))
    await eventually(lambda: account_stats(pool, "a")["waiting"] == 1, what="a waiter")

    pool.remove("a")

    with pytest.raises(UnknownAccount):
        await waiting
    with pytest.raises(UnknownAccount):
        await pool.send("a", SENDER, [RCPT], MESSAGE)
    assert "a" not in pool.stats()
    await pool.release(held)
    await eventually(lambda: upstream.sessions_open == 0, what="the removed account's session to close")
