"""A session's life: TTL, message cap, NOOP only after idling, idle cleanup, dropped sessions."""

from __future__ import annotations

import asyncio
import time

import pytest

from mailgate.pool import SendResult, SMTPPool
from tests.pool.support import MESSAGE, RCPT, SENDER, account_stats, eventually, limits
from tests.smtp_servers import settings_for

pytestmark = pytest.mark.timeout(30)


async def test_a_busy_connection_expires_at_its_ttl(pool: SMTPPool, upstream) -> None:
    """Back-to-back sends never leave the session idle; it is still replaced once its TTL is up."""
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1, ttl=0.3, max_messages_per_connection=10_000)))
    deadline = time.monotonic() + 10
    results: list[SendResult] = []
    while account_stats(pool, "a")["closed"].get("ttl", 0) == 0:
        assert time.monotonic() < deadline and len(results) < 5_000, "the session never expired"
        results.append(await pool.send("a", SENDER, [RCPT], MESSAGE))

    results.append(await pool.send("a", SENDER, [RCPT], MESSAGE))

    # The expiry is found on release or on the next acquire; either way one later send opened a new session.
    assert [r.connection_reused for r in results[1:]].count(False) == 1
    assert upstream.counters.sessions_total == 2
    assert len(upstream.wait_messages(len(results))) == len(results)


async def test_max_messages_per_connection_forces_a_reconnect(pool: SMTPPool, upstream) -> None:
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1, max_messages_per_connection=3)))

    results = [await pool.send("a", SENDER, [RCPT], MESSAGE) for _ in range(7)]

    assert [r.connection_reused for r in results] == [False, True, True, False, True, True, False]
    assert upstream.counters.sessions_total == 3
    assert account_stats(pool, "a")["closed"] == {"max_messages": 2}


async def test_noop_only_after_the_idle_threshold(pool: SMTPPool, upstream) -> None:
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1, health_check_after_idle=0.5)))
    for _ in range(5):
        await pool.send("a", SENDER, [RCPT], MESSAGE)
    assert upstream.counters.noops == 0, "back-to-back sends must not pay a NOOP round trip"
    assert account_stats(pool, "a")["last_health_check"]["error"] is None

    await asyncio.sleep(0.6)  # the behaviour under test: the session idles past the threshold
    result = await pool.send("a", SENDER, [RCPT], MESSAGE)

    assert result.connection_reused is True
    assert upstream.counters.noops == 1
    for _ in range(3):
        await pool.send("a", SENDER, [RCPT], MESSAGE)
    assert upstream.counters.noops == 1
    assert account_stats(pool, "a")["last_health_check"]["ok"] is True


async def test_failed_noop_replaces_the_session_before_sending(pool: SMTPPool, upstream) -> None:
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1, health_check_after_idle=0.2)))
    held = await pool.acquire("a")
    held_session = held.smtp
    await pool.release(held)
    await asyncio.sleep(0.3)  # idle past the health-check threshold
    upstream.drop_all()  # the client has not noticed yet: the NOOP is what finds out

    conn = await pool.acquire("a")

    assert conn.smtp is not held_session and conn.is_connected()
    stats = account_stats(pool, "a")
    assert stats["closed"] == {"error": 1} and stats["created"] == 2
    await pool.release(conn)


async def test_idle_connections_are_closed_by_the_background_task(pool: SMTPPool, upstream) -> None:
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=2, idle_timeout=0.2)))
    await asyncio.gather(*(pool.send("a", SENDER, [RCPT], MESSAGE) for _ in range(4)))
    assert account_stats(pool, "a")["idle"] >= 1

    await eventually(lambda: account_stats(pool, "a")["idle"] == 0, what="idle sessions to be closed")

    stats = account_stats(pool, "a")
    assert stats["closed"] == {"idle": stats["created"]} and stats["active"] == 0
    await eventually(lambda: upstream.sessions_open == 0, what="the upstream to see the sessions end")


async def test_dropped_idle_connection_noticed_at_send_is_retried_transparently(pool: SMTPPool, upstream) -> None:
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1)))
    await pool.send("a", SENDER, [RCPT], MESSAGE)

    upstream.drop_all()  # synchronous: the client loop has not seen the EOF when send() starts
    result = await pool.send("a", SENDER, [RCPT], MESSAGE)

    assert (result.code, result.attempts, result.connection_reused) == (250, 2, False)
    assert len(upstream.wait_messages(2)) == 2
    assert upstream.counters.sessions_total == 2
    assert account_stats(pool, "a")["closed"] == {"error": 1}


async def test_dropped_idle_connection_noticed_while_idle_is_replaced(pool: SMTPPool, upstream) -> None:
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1)))
    await pool.send("a", SENDER, [RCPT], MESSAGE)

    upstream.drop_all()
    await eventually(lambda: account_stats(pool, "a")["closed"] == {"error": 1}, what="cleanup to notice the drop")
    assert account_stats(pool, "a")["idle"] == 0
    result = await pool.send("a", SENDER, [RCPT], MESSAGE)

    assert (result.code, result.attempts, result.connection_reused) == (250, 1, False)
    assert len(upstream.wait_messages(2)) == 2


async def test_stats_describe_the_pool(pool: SMTPPool, upstream) -> None:
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=3)))
    held = await pool.acquire("a")
    await pool.send("a", SENDER, [RCPT], MESSAGE)

    stats = account_stats(pool, "a")

    assert stats["upstream"] == f"127.0.0.1:{upstream.port}"
    assert (stats["max_connections"], stats["idle"], stats["active"], stats["waiting"]) == (3, 1, 1, 0)
    assert (stats["created"], stats["messages_sent"], stats["closed"]) == (2, 1, {})
    assert stats["last_health_check"]["ok"] is True and stats["last_error"] is None
    await pool.release(held)
    assert (account_stats(pool, "a")["idle"], account_stats(pool, "a")["active"]) == (2, 0)


async def test_check_health_probes_an_idle_session_now(pool: SMTPPool, upstream) -> None:
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1)))
    await pool.send("a", SENDER, [RCPT], MESSAGE)

    health = await pool.check_health("a")

    assert health.ok is True and upstream.counters.noops == 1
    assert pool.health("a") is health


async def test_check_health_on_an_empty_pool_connects(pool: SMTPPool, upstream) -> None:
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1)))

    health = await pool.check_health("a")

    assert health.ok is True and upstream.counters.sessions_total == 1
    assert account_stats(pool, "a")["idle"] == 1


async def test_cleanup_can_be_called_directly(upstream_factory) -> None:
    """Without the background task (a long interval), ``cleanup()`` alone keeps ``stats()`` true."""
    upstream = upstream_factory()
    pool = SMTPPool(cleanup_interval=3600)
    try:
        pool.configure("a", settings_for(upstream, limits=limits(idle_timeout=0.1)))
        await pool.send("a", SENDER, [RCPT], MESSAGE)
        await asyncio.sleep(0.15)  # the behaviour under test: the session idles past its timeout
        assert account_stats(pool, "a")["idle"] == 1, "nothing but cleanup() may close it"

        await pool.cleanup()

        assert account_stats(pool, "a")["idle"] == 0 and account_stats(pool, "a")["closed"] == {"idle": 1}
    finally:
        await pool.close_all()
    await eventually(lambda: upstream.sessions_open == 0, what="the idle session to end upstream")
