"""close_all: idle sessions at once, checked-out ones on release or after the grace, no leaks."""

from __future__ import annotations

import asyncio

import pytest

from mailgate.pool import PoolClosed, SMTPPool
from tests.pool.support import MESSAGE, RCPT, SENDER, account_stats, eventually, limits
from tests.smtp_servers import settings_for

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("tls", ["none", "starttls", "implicit"])
async def test_close_all_with_checked_out_connections_leaks_nothing(pool: SMTPPool, upstream_factory, tls: str) -> None:
    upstream = upstream_factory(tls=tls, users={"user": "secret"} if tls != "none" else None)
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=2)))
    checked_out = await pool.acquire("a")
    idle = await pool.acquire("a")
    await pool.release(idle)

    closing = asyncio.create_task(pool.close_all(grace=10))
    await eventually(lambda: upstream.sessions_open == 1, what="the idle session to close at once")
    assert not closing.done(), "close_all waits for the checked-out session"
    result = await checked_out.transaction(SENDER, [RCPT], MESSAGE)  # in-flight work finishes
    await pool.release(checked_out)
    await asyncio.wait_for(closing, timeout=5)

    assert result.code == 250
    await eventually(lambda: upstream.sessions_open == 0, what="every session to end upstream")
    stats = account_stats(pool, "a")
    assert stats["closed"] == {"shutdown": 2} and (stats["idle"], stats["active"]) == (0, 0)


async def test_waiters_get_pool_closed(pool: SMTPPool, upstream) -> None:
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1)))
    held = await pool.acquire("a")
    waiting = asyncio.create_task(pool.acquire("a", timeout=None))
    await eventually(lambda: account_stats(pool, "a")["waiting"] == 1, what="a waiter")

    closing = asyncio.create_task(pool.close_all(grace=10))
    with pytest.raises(PoolClosed):
        await waiting
    with pytest.raises(PoolClosed):
        await pool.send("a", SENDER, [RCPT], MESSAGE)
    await pool.release(held)
    await asyncio.wait_for(closing, timeout=5)

    await eventually(lambda: upstream.sessions_open == 0, what="the session to end upstream")


async def test_grace_period_bounds_shutdown(pool: SMTPPool, upstream) -> None:
    """A caller that never gives its connection back cannot hold shutdown forever."""
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1)))
    forgotten = await pool.acquire("a")

    await pool.close_all(grace=0.1)

    assert not forgotten.is_connected()
    assert account_stats(pool, "a")["closed"] == {"shutdown": 1}
    await eventually(lambda: upstream.sessions_open == 0, what="the forgotten session to end upstream")
    await pool.release(forgotten)  # a late release is harmless
    assert account_stats(pool, "a")["closed"] == {"shutdown": 1}


async def test_close_all_stops_the_background_task(pool: SMTPPool, upstream) -> None:
    pool.configure("a", settings_for(upstream, limits=limits()))
    await pool.send("a", SENDER, [RCPT], MESSAGE)
    tasks_before = {task for task in asyncio.all_tasks() if task.get_name() == "smtp-pool-cleanup"}
    assert len(tasks_before) == 1

    await pool.close_all()

    assert all(task.done() for task in tasks_before)
    await eventually(lambda: upstream.sessions_open == 0, what="the idle session to end upstream")
