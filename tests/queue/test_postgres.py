"""What only the PostgreSQL backend promises: cross-process wake-ups, concurrent migrations, restarts."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from mailgate.queue import AttemptResult, NewMessage, Outcome, QueueError, QueueUnavailable, SchemaTooNew, open_store
from mailgate.queue.postgres import DUE_ACCOUNTS, SCHEMA_VERSION
from tests.pool.support import eventually
from tests.queue.postgres import PASSWORD, PostgresServer
from tests.queue.support import T0, message
from tests.smtp_servers import _free_port


async def test_wait_for_work_wakes_another_store(postgres_dsn: str) -> None:
    """LISTEN/NOTIFY: an enqueue or a deferral through one store (one replica) wakes the others."""
    async with await open_store(postgres_dsn) as waiting, await open_store(postgres_dsn) as writing:
        assert await waiting.wait_for_work(0.05) is False
        woken = asyncio.create_task(waiting.wait_for_work(30))
        await asyncio.sleep(0.05)
        assert not woken.done()
        await writing.enqueue(message(), now=T0)
        assert await woken is True

        (claimed,) = await writing.claim("w", limit=1, lease_seconds=60, now=T0)
        assert await waiting.wait_for_work(0.05) is False  # a claim is no new work
        woken = asyncio.create_task(waiting.wait_for_work(30))
        await writing.finish_attempt(
            claimed.lease, [AttemptResult("ops@example.com", Outcome.DEFERRED, 451, "later")], next_attempt_at=T0 + 5
        )
        assert await woken is True

        (claimed,) = await writing.claim("w", limit=1, lease_seconds=60, now=T0 + 5)
        woken = asyncio.create_task(waiting.wait_for_work(30))
        await writing.finish_attempt(  # the one-statement path (as claimed) notifies too
            claimed.lease,
            [AttemptResult("ops@example.com", Outcome.DEFERRED, 451, "later")],
            next_attempt_at=T0 + 10,
            current=claimed.message,
        )
        assert await woken is True


async def test_a_message_the_database_refuses_fails_alone(postgres_dsn: str) -> None:
    """Group commit retries a failed batch message by message: only the bad one fails."""
    async with await open_store(postgres_dsn) as store:
        bad = NewMessage("mail/alerts", "nul\x00@example.com", ["ops@example.com"], b"x\r\n")  # text cannot hold NUL
        results = await asyncio.gather(
            *(store.enqueue(message(body=str(n))) for n in range(5)),
            store.enqueue(bad),
            *(store.enqueue(message(body=str(n))) for n in range(5)),
            return_exceptions=True,
        )
        assert isinstance(results[5], QueueError) and not isinstance(results[5], QueueUnavailable)
        stored = [r for r in results if isinstance(r, str)]
        assert len(stored) == 10
        for message_id in stored:
            assert await store.get(message_id) is not None
        assert store.counters.enqueue_failures == 1


async def test_migrations_run_once_when_replicas_start_together(
    postgres_server: PostgresServer, postgres_schema: str, postgres_dsn: str
) -> None:
    dsn = postgres_dsn
    stores = await asyncio.gather(*(open_store(dsn) for _ in range(6)))
    try:
        assert await stores[0].get("0" * 32) is None
    finally:
        for store in stores:
            await store.close()
    async with await open_store(dsn) as again:  # an up-to-date schema: nothing to do
        await again.enqueue(message())
    versions = postgres_server.psql("SELECT version FROM mailgate_schema_migrations ORDER BY version", schema=postgres_schema)
    assert versions.split() == [str(v) for v in range(1, SCHEMA_VERSION + 1)]


async def test_a_newer_schema_is_refused(postgres_server: PostgresServer, postgres_schema: str, postgres_dsn: str) -> None:
    dsn = postgres_dsn
    async with await open_store(dsn):
        pass
    postgres_server.psql(
        f"INSERT INTO mailgate_schema_migrations (version) VALUES ({SCHEMA_VERSION + 1})", schema=postgres_schema
    )
    with pytest.raises(SchemaTooNew):
        await open_store(dsn)


async def test_the_password_never_shows(postgres_server: PostgresServer, postgres_dsn: str) -> None:
    async with await open_store(postgres_dsn) as store:
        assert PASSWORD not in repr(store) and "***" in repr(store)
    closed_port = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{_free_port()}/postgres"
    with pytest.raises(QueueUnavailable) as refused:
        await open_store(closed_port, connect_timeout=5)
    wrong = postgres_dsn.replace(PASSWORD, PASSWORD + "-wrong")
    assert wrong != postgres_dsn
    with pytest.raises(QueueUnavailable) as denied:
        await open_store(wrong)
    for error in (refused.value, denied.value):
        assert PASSWORD not in str(error) and PASSWORD not in repr(error)
    assert "password authentication failed" in str(denied.value)


async def test_enqueue_across_a_server_restart_loses_nothing(
    postgres_server: PostgresServer, postgres_schema: str, postgres_dsn: str
) -> None:
    """Enqueue under load while PostgreSQL restarts: each call either returned an id that is stored,
    or raised QueueUnavailable; at most the calls that raised left a message behind (commit-unknown);
    the store reconnects by itself, LISTEN included."""
    async with await open_store(postgres_dsn, command_timeout=10) as store, await open_store(postgres_dsn) as other:
        acknowledged: list[str] = []
        failures: list[QueueUnavailable] = []
        stop = asyncio.Event()

        async def produce(worker: int) -> None:
            n = 0
            while not stop.is_set():
                try:
                    acknowledged.append(await store.enqueue(message(body=f"{worker}/{n}")))
                except QueueUnavailable as exc:  # anything else fails the test
                    failures.append(exc)
                    await asyncio.sleep(0.02)
                n += 1

        producers = [asyncio.create_task(produce(worker)) for worker in range(20)]
        try:
            await eventually(lambda: len(acknowledged) >= 200, 30, "enqueues before the restart")
            await asyncio.to_thread(postgres_server.restart)
            after_restart = len(acknowledged)
            await eventually(lambda: len(acknowledged) >= after_restart + 200, 30, "enqueues after the restart")
        finally:
            stop.set()
            await asyncio.gather(*producers)

        stored = set(postgres_server.psql("SELECT id FROM mailgate_messages", schema=postgres_schema).split())
        assert len(acknowledged) >= 400
        assert set(acknowledged) <= stored, "an acknowledged enqueue was lost"
        assert len(stored - set(acknowledged)) <= len(failures)
        assert all(str(f).startswith("PostgreSQL unavailable") for f in failures)

        # the listeners are back too: both LISTEN again, and a wake-up crosses from one store to the other
        listening = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
        await eventually(lambda: postgres_server.psql(listening).strip() == "2", 30, "both listeners back")
        while await store.wait_for_work(0.2):  # the reconnection's own wake-up
            pass
        woken = asyncio.create_task(store.wait_for_work(30))
        await asyncio.sleep(0.05)
        await other.enqueue(message())
        assert await woken is True


async def test_finding_due_accounts_does_not_read_every_due_message(postgres_dsn: str) -> None:
    """One account's backlog (an upstream down for a day, its messages due again) must not make the delivery
    loop's question cost more for every other account: the rows the plan reads grow with accounts, not messages."""

    async def rows_read(store: Any) -> int:
        async with store._connection() as conn:
            await conn.execute("ANALYZE mailgate_messages")
            (plan,) = json.loads(await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + DUE_ACCOUNTS, T0 + 1, 1000))
        return _scanned(plan["Plan"])

    async with await open_store(postgres_dsn) as store:
        for account in ("mail/a", "mail/b", "mail/c"):
            await store.enqueue(message(account), now=T0)
        small = await rows_read(store)
        await asyncio.gather(*(store.enqueue(message("mail/backlog"), now=T0 + 0.5) for _ in range(3000)))
        large = await rows_read(store)
        assert await store.due_accounts(now=T0 + 1) == ["mail/a", "mail/b", "mail/c", "mail/backlog"]
    assert large < 100, (small, large)


def _scanned(node: dict[str, Any]) -> int:
    """Rows the scans of a plan produced (each node's rows times its loops), over the whole tree."""
    own = node["Actual Rows"] * node["Actual Loops"] if "Scan" in node["Node Type"] else 0
    return own + sum(_scanned(child) for child in node.get("Plans", []))
