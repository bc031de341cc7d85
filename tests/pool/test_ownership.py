"""Ownership after faults: a session has one owner at a time, whatever a caller or the upstream does.

Issue 18 item 4. Each test reproduces a way the pool's bookkeeping could be
corrupted (a double release, a fresh retry handed a reused session, a health
check cancelled mid-NOOP) against a real aiosmtpd upstream, and checks both
what the caller sees and that the pool's counts stay true afterwards.
"""

from __future__ import annotations

import asyncio

import pytest

from mailgate.pool import PoolError, PoolTimeout, SMTPPool
from tests.pool.support import MESSAGE, RCPT, SENDER, account_stats, eventually, limits, pool_size
from tests.smtp_servers import settings_for

pytestmark = pytest.mark.timeout(30)


async def test_double_release_is_an_error_and_changes_nothing(pool: SMTPPool, upstream) -> None:
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1)))
    conn = await pool.acquire("a")
    await pool.release(conn)

    with pytest.raises(PoolError, match="released"):
        await pool.release(conn)

    stats = account_stats(pool, "a")
    assert (stats["idle"], stats["active"], stats["closed"]) == (1, 0, {}), "the idle session must stay usable"
    result = await pool.send("a", SENDER, [RCPT], MESSAGE, timeout=0)
    assert (result.code, result.connection_reused) == (250, False)
    assert upstream.counters.sessions_total == 1


async def test_double_release_after_a_handover_cannot_make_two_owners(pool: SMTPPool, upstream) -> None:
    """The second release comes after the session went to a waiter: it must not hand it out again."""
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1)))
    first = await pool.acquire("a")
    waiting = asyncio.create_task(pool.acquire("a", timeout=None))
    await eventually(lambda: account_stats(pool, "a")["waiting"] == 1, what="a waiter")
    await pool.release(first)  # the session changes hands: the waiter owns it now
    second = await waiting

    with pytest.raises(PoolError, match="released"):
        await pool.release(first)

    assert (account_stats(pool, "a")["idle"], account_stats(pool, "a")["active"]) == (0, 1)
    with pytest.raises(PoolTimeout):  # still owned by the waiter: nobody else may get it
        await pool.acquire("a", timeout=0)
    assert (await second.transaction(SENDER, [RCPT], MESSAGE)).code == 250
    await pool.release(second)
    assert (account_stats(pool, "a")["idle"], account_stats(pool, "a")["active"]) == (1, 0)


async def test_a_released_connection_cannot_be_used(pool: SMTPPool, upstream) -> None:
    """A caller that keeps its handle after release would share the session with the next owner."""
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1)))
    conn = await pool.acquire("a")
    await pool.release(conn)
    nxt = await pool.acquire("a", timeout=0)

    with pytest.raises(PoolError, match="released"):
        await conn.transaction(SENDER, [RCPT], MESSAGE)

    assert upstream.messages == []
    assert (await nxt.transaction(SENDER, [RCPT], MESSAGE)).code == 250
    await pool.release(nxt)


async def test_a_queued_fresh_acquire_is_never_handed_a_reused_session(pool: SMTPPool, upstream) -> None:
    """The one retry after a dead reused session must run on a new session, even when it had to queue.

    A reused session released while the retry waits would most likely be as
    dead as the first (same age, same provider idle cut-off): it is retired
    to make room, and the limit still holds in the upstream's view.
    """
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1)))
    held = await pool.acquire("a")
    assert (await held.transaction(SENDER, [RCPT], MESSAGE)).code == 250  # now a reused session
    retry = asyncio.create_task(pool.acquire("a", timeout=None, fresh=True))
    await eventually(lambda: account_stats(pool, "a")["waiting"] == 1, what="the fresh acquire to queue")
    held_session = held.smtp

    await pool.release(held)
    conn = await retry

    assert conn.smtp is not held_session and not conn.is_reused()
    assert upstream.counters.sessions_total == 2
    assert upstream.sessions_peak == 1, "the reused session must be closed before the fresh one opens"
    assert account_stats(pool, "a")["closed"] == {"reconfigure": 1}
    await pool.release(conn)


async def test_a_queued_plain_acquire_still_gets_the_released_session(pool: SMTPPool, upstream) -> None:
    """Only the fresh retry is picky: everyone else keeps the warm session (no needless reconnects)."""
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1)))
    held = await pool.acquire("a")
    waiting = asyncio.create_task(pool.acquire("a", timeout=None))
    await eventually(lambda: account_stats(pool, "a")["waiting"] == 1, what="a waiter")
    held_session = held.smtp

    await pool.release(held)
    conn = await waiting

    assert conn.smtp is held_session and upstream.counters.sessions_total == 1
    await pool.release(conn)


async def test_waiters_behind_a_queued_fresh_acquire_keep_their_turn(pool: SMTPPool, upstream) -> None:
    """FIFO holds with a fresh acquire at the head: it gets the first slot, the next waiter the next session."""
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=2)))
    first, second = await pool.acquire("a"), await pool.acquire("a")
    retry = asyncio.create_task(pool.acquire("a", timeout=None, fresh=True))
    await eventually(lambda: account_stats(pool, "a")["waiting"] == 1, what="the fresh acquire to queue")
    plain = asyncio.create_task(pool.acquire("a", timeout=None))
    await eventually(lambda: account_stats(pool, "a")["waiting"] == 2, what="a second waiter behind it")
    sessions = {first.smtp, second.smtp}

    await pool.release(first)
    fresh = await retry
    await pool.release(second)
    warm = await plain

    assert fresh.smtp not in sessions and warm.smtp in sessions
    assert upstream.sessions_peak <= 2
    await pool.release(fresh)
    await pool.release(warm)
    assert pool_size(pool, "a") == 2


async def test_check_health_cancelled_during_its_noop_leaks_nothing(pool: SMTPPool, upstream) -> None:
    """A probe cancelled mid-NOOP (an admin request that gave up) must give its session back."""
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1)))
    await pool.send("a", SENDER, [RCPT], MESSAGE)
    upstream.hold_noops()
    try:
        probe = asyncio.create_task(pool.check_health("a"))
        await eventually(lambda: upstream.counters.noops == 1, what="the upstream to receive the NOOP")

        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
    finally:
        upstream.release_noops()

    stats = account_stats(pool, "a")
    # A NOOP whose reply never came leaves the session out of step: discarded, never put back.
    assert (stats["idle"], stats["active"], stats["closed"]) == (0, 0, {"error": 1})
    result = await pool.send("a", SENDER, [RCPT], MESSAGE)  # the slot comes back once the QUIT is done
    assert (result.code, result.connection_reused) == (250, False)
    await eventually(lambda: upstream.sessions_open == 1, what="the probed session to end upstream")
