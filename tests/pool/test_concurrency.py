"""Sharing: exclusivity, limits, FIFO waiters, deadlines, cancellation, isolation of accounts."""

from __future__ import annotations

import asyncio

import pytest

from mailgate.pool import PooledConnection, PoolTimeout, SMTPPool
from tests.pool.support import MESSAGE, RCPT, SENDER, account_stats, eventually, limits, pool_size
from tests.smtp_servers import settings_for

pytestmark = pytest.mark.timeout(30)


async def test_stalled_account_does_not_delay_another(pool: SMTPPool, upstream, stall_server) -> None:
    """A connects to a server that never greets; B's sends complete while A is still connecting."""
    stalled = settings_for(upstream, port=stall_server.port, command_timeout=30.0, limits=limits(acquire_timeout=None))
    pool.configure("a", stalled)
    pool.configure("b", settings_for(upstream, limits=limits()))
    a_send = asyncio.create_task(pool.send("a", SENDER, [RCPT], MESSAGE))
    await eventually(lambda: account_stats(pool, "a")["opening"] == 1, what="A connecting")

    results = await asyncio.gather(*(pool.send("b", SENDER, [RCPT], MESSAGE) for _ in range(10)))

    assert [r.code for r in results] == [250] * 10
    assert not a_send.done(), "A should still be waiting for its greeting"
    a_send.cancel()
    with pytest.raises(asyncio.CancelledError):
        await a_send
    assert pool_size(pool, "a") == 0, "a cancelled connect must give its slot back"


async def test_200_senders_on_a_limit_of_2(pool: SMTPPool, upstream) -> None:
    # Reconnects every 20 messages: a session still saying QUIT must keep counting against the limit.
    settings = settings_for(upstream, limits=limits(max_connections=2, acquire_timeout=None, max_messages_per_connection=20))
    pool.configure("a", settings)

    results = await asyncio.gather(*(pool.send("a", SENDER, [f"r{i}@example.org"], MESSAGE) for i in range(200)))

    assert all(r.code == 250 for r in results)
    received = upstream.wait_messages(200)
    assert sorted(m.rcpt_tos[0] for m in received) == sorted(f"r{i}@example.org" for i in range(200))
    assert upstream.sessions_peak <= 2
    stats = account_stats(pool, "a")
    assert stats["messages_sent"] == 200 and stats["created"] >= 10
    assert stats["closed"] == {"max_messages": stats["created"] - stats["idle"]}
    assert (stats["active"], stats["waiting"], stats["opening"]) == (0, 0, 0)


async def test_connections_are_handed_out_exclusively(pool: SMTPPool, upstream) -> None:
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=3, acquire_timeout=None)))
    in_use: set[int] = set()
    most = 0

    async def borrow() -> None:
        nonlocal most
        async with pool.connection("a") as conn:
            session = id(conn.smtp)  # the session, not the handle: a handle is new on every checkout
            assert session not in in_use, "a session was handed to two tasks at once"
            in_use.add(session)
            most = max(most, len(in_use))
            await conn.transaction(SENDER, [RCPT], MESSAGE)
            in_use.discard(session)

    await asyncio.gather(*(borrow() for _ in range(30)))

    assert most == 3
    assert len(upstream.wait_messages(30)) == 30


async def test_waiters_are_served_in_fifo_order_and_newcomers_do_not_overtake(pool: SMTPPool, upstream) -> None:
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1)))
    held = await pool.acquire("a")
    order: list[int] = []

    async def waiter(index: int) -> None:
        conn = await pool.acquire("a", timeout=None)
        order.append(index)
        await pool.release(conn)

    tasks = []
    for index in range(5):
        tasks.append(asyncio.create_task(waiter(index)))

        def waiting(n: int = index + 1) -> bool:
            return account_stats(pool, "a")["waiting"] == n

        await eventually(waiting, what=f"{index + 1} waiters")

    await pool.release(held)
    # The released connection already belongs to the first waiter: a newcomer must not get it.
    with pytest.raises(PoolTimeout):
        await pool.acquire("a", timeout=0)
    await asyncio.gather(*tasks)

    assert order == [0, 1, 2, 3, 4]
    assert upstream.counters.sessions_total == 1


async def test_zero_timeout_raises_at_once_when_saturated(pool: SMTPPool, upstream) -> None:
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1, acquire_timeout=None)))
    held = await pool.acquire("a")

    with pytest.raises(PoolTimeout, match="saturated"):
        await pool.acquire("a", timeout=0)

    assert account_stats(pool, "a")["waiting"] == 0
    await pool.release(held)


async def test_positive_timeout_is_a_deadline(pool: SMTPPool, upstream) -> None:
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1)))
    held = await pool.acquire("a")

    with pytest.raises(PoolTimeout):
        await pool.acquire("a", timeout=0.05)

    stats = account_stats(pool, "a")
    assert (stats["waiting"], stats["active"]) == (0, 1)
    await pool.release(held)
    assert (await pool.send("a", SENDER, [RCPT], MESSAGE)).connection_reused is False


async def test_none_waits_beyond_the_default_deadline(pool: SMTPPool, upstream) -> None:
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1, acquire_timeout=0.05)))
    held = await pool.acquire("a", timeout=None)  # the connect must not race the 0.05 s default
    patient = asyncio.create_task(pool.acquire("a", timeout=None))
    await eventually(lambda: account_stats(pool, "a")["waiting"] == 1, what="a waiter")

    with pytest.raises(PoolTimeout):
        await pool.acquire("a")  # the account's default deadline, 0.05 s

    assert not patient.done()
    held_session = held.smtp
    await pool.release(held)
    conn = await patient
    assert conn.smtp is held_session, "the idle connection goes to the waiter"
    await pool.release(conn)


async def test_cancelled_waiter_leaves_no_leaked_slot(pool: SMTPPool, upstream) -> None:
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1)))
    held = await pool.acquire("a")
    waiting = asyncio.create_task(pool.acquire("a", timeout=None))
    await eventually(lambda: account_stats(pool, "a")["waiting"] == 1, what="a waiter")

    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting

    assert account_stats(pool, "a")["waiting"] == 0
    held_session = held.smtp
    await pool.release(held)
    again = await pool.acquire("a", timeout=0)
    assert again.smtp is held_session
    await pool.release(again)


async def test_waiter_cancelled_after_its_grant_gives_the_connection_back(pool: SMTPPool, upstream) -> None:
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1)))
    held = await pool.acquire("a")
    waiting = asyncio.create_task(pool.acquire("a", timeout=None))
    await eventually(lambda: account_stats(pool, "a")["waiting"] == 1, what="a waiter")

    held_session = held.smtp
    await pool.release(held)  # granted to the waiter, which has not run yet
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting

    stats = account_stats(pool, "a")
    assert (stats["idle"], stats["active"], stats["waiting"]) == (1, 0, 0)
    again: PooledConnection = await pool.acquire("a", timeout=0)
    assert again.smtp is held_session
    await pool.release(again)


async def test_waiter_granted_a_slot_then_cancelled_returns_the_slot(pool: SMTPPool, upstream) -> None:
    pool.configure("a", settings_for(upstream, limits=limits(max_connections=1)))
    held = await pool.acquire("a")
    waiting = asyncio.create_task(pool.acquire("a", timeout=None))
    await eventually(lambda: account_stats(pool, "a")["waiting"] == 1, what="a waiter")

    # A raised limit grants the waiter a free slot ("open one") at once; it is cancelled before it runs.
    pool.reconfigure("a", settings_for(upstream, limits=limits(max_connections=2)))
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting

    assert pool_size(pool, "a") == 1
    conn = await pool.acquire("a", timeout=0)
    assert conn.smtp is not held.smtp and conn.is_connected()
    assert pool_size(pool, "a") == 2
    await pool.release(conn)
    await pool.release(held)


async def test_accounts_have_separate_limits(pool: SMTPPool, upstream_factory) -> None:
    first, second = upstream_factory(), upstream_factory()
    pool.configure("a", settings_for(first, limits=limits(max_connections=1)))
    pool.configure("b", settings_for(second, limits=limits(max_connections=1)))
    held = await pool.acquire("a")

    result = await pool.send("b", SENDER, [RCPT], MESSAGE, timeout=0)

    assert result.code == 250
    await pool.release(held)


async def test_constructor_limits_apply_to_accounts_without_their_own(upstream) -> None:
    """The seed's ``SMTPPool(ttl=..., max_per_account=...)`` still means what it said."""
    pool = SMTPPool(ttl=120.0, max_per_account=1)
    try:
        pool.configure("a", settings_for(upstream))  # no limits in the settings
        await asyncio.gather(*(pool.send("a", SENDER, [RCPT], MESSAGE) for _ in range(5)))
        assert account_stats(pool, "a")["max_connections"] == 1
        assert upstream.sessions_peak == 1
    finally:
        await pool.close_all()
