"""What only the SQLite backend promises: its durability settings, its schema versioning, its URLs."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mailgate.queue import AttemptResult, LeaseLost, Outcome, SchemaTooNew, open_store, store_for_url
from mailgate.queue.sqlite import DUE_ACCOUNTS, SCHEMA_VERSION, SQLiteStore
from tests.queue.support import T0, message


async def test_the_file_is_wal_with_full_sync_and_versioned(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    async with SQLiteStore(path) as store:
        await store.enqueue(message())
        synchronous = await store._call(lambda: store._db.execute("PRAGMA synchronous").fetchone()[0])
        assert synchronous == 2  # FULL: every COMMIT fsyncs the WAL
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("SELECT count(*) FROM mailgate_messages").fetchone()[0] == 1
    db.close()


async def test_two_stores_creating_one_file_migrate_it_once(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'queue.db'}"
    stores = await asyncio.gather(*(open_store(url) for _ in range(4)))
    try:
        ids = await asyncio.gather(*(s.enqueue(message()) for s in stores))
        for message_id in ids:
            assert await stores[0].get(message_id) is not None
    finally:
        for store in stores:
            await store.close()


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    async with SQLiteStore(path):
        pass
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(SchemaTooNew):
        await open_store(f"sqlite://{path}")


def test_queue_urls() -> None:
    assert str(store_for_url("sqlite:///var/lib/mailgate/queue.db").path) == "/var/lib/mailgate/queue.db"  # type: ignore[attr-defined]
    assert str(store_for_url("sqlite:queue.db").path) == "queue.db"  # type: ignore[attr-defined]
    assert repr(store_for_url("postgres://u:pw@db:5432/mail")) == "PostgresStore('postgres://u:***@db:5432/mail')"
    for bad in ("sqlite://host/queue.db", "sqlite://", "mysql://db/mail", "sqlite:///q.db?mode=memory"):
        with pytest.raises(ValueError):
            store_for_url(bad)


def _steps(path: Path, sql: str, params: tuple[object, ...]) -> tuple[list[str], int]:
    """The rows and how many virtual-machine steps SQLite took for them (a progress handler every step)."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    db = sqlite3.connect(path)
    try:
        db.set_progress_handler(count, 1)
        rows = [row[0] for row in db.execute(sql, params)]
    finally:
        db.close()
    return rows, steps


async def test_finding_due_accounts_does_not_read_every_pending_message(tmp_path: Path) -> None:
    """The delivery loop asks on every freed slot and every enqueue: one account's deferred backlog (an
    upstream down for a day) must not make that question cost more for every other account."""
    path = tmp_path / "queue.db"
    async with SQLiteStore(path) as store:
        for account in ("mail/a", "mail/b", "mail/c"):
            await store.enqueue(message(account), now=T0)
        small = _steps(path, DUE_ACCOUNTS, (T0 + 1, 1000))
        await asyncio.gather(*(store.enqueue(message("mail/backlog"), now=T0 + 0.5) for _ in range(3000)))
        large = _steps(path, DUE_ACCOUNTS, (T0 + 1, 1000))
        assert await store.due_accounts(now=T0 + 1) == ["mail/a", "mail/b", "mail/c", "mail/backlog"]
    assert small[0] == ["mail/a", "mail/b", "mail/c"]
    assert large[1] < 3 * small[1], (small[1], large[1])  # per account, not per message


async def test_acceptance_stays_fully_synchronous_after_lazy_delivery_bookkeeping(tmp_path: Path) -> None:
    """Claims, lease extensions and results commit without an fsync of their own (a lost one means a redelivery,
    never a lost message); every acceptance after them must still fsync before it is acknowledged."""
    path = tmp_path / "queue.db"
    async with SQLiteStore(path) as store:
        await store.enqueue(message(), now=T0)
        (claimed,) = await store.claim("w1", limit=10, lease_seconds=60, now=T0)
        lease = await store.extend_lease(claimed.lease, lease_seconds=60, now=T0 + 1)
        results = [AttemptResult("ops@example.com", Outcome.SENT, 250, "ok")]
        await store.finish_attempt(lease, results, next_attempt_at=None, now=T0 + 2)
        await store.enqueue(message(), now=T0 + 3)
        synchronous = await store._call(lambda: store._db.execute("PRAGMA synchronous").fetchone()[0])
    assert synchronous == 2  # FULL


class _Transactions:
    """The store connection's statements, read through SQLite's trace callback: which transactions committed,
    whether each wrote a new message, and the ``synchronous`` setting in force at its COMMIT."""

    def __init__(self) -> None:
        self.commits: list[tuple[bool, str]] = []  # (enqueued a message, synchronous at COMMIT)
        self._synchronous = "FULL"
        self._enqueued = False

    def __call__(self, statement: str) -> None:
        text = " ".join(statement.split()).upper()
        if text.startswith("PRAGMA SYNCHRONOUS="):
            self._synchronous = text.removeprefix("PRAGMA SYNCHRONOUS=")
        elif text.startswith("BEGIN"):
            self._enqueued = False
        elif text.startswith("INSERT INTO MAILGATE_MESSAGES"):
            self._enqueued = True
        elif text == "COMMIT":
            self.commits.append((self._enqueued, self._synchronous))


async def _traced(store: SQLiteStore) -> _Transactions:
    transactions = _Transactions()
    await store._call(lambda: store._db.set_trace_callback(transactions))
    return transactions


async def test_concurrent_claims_and_results_share_transactions(tmp_path: Path) -> None:
    """Each claim or result alone was a transaction of its own (BEGIN, the statements, COMMIT with the WAL pages it
    touched, a thread hop there and back): at a thousand messages a second, most of the store thread's time. Those
    waiting while the thread is busy now commit together, and each still gets its own answer."""
    async with SQLiteStore(tmp_path / "queue.db") as store:
        await asyncio.gather(*(store.enqueue(message(body=f"n{i}"), now=T0) for i in range(40)))
        transactions = await _traced(store)

        claims = await asyncio.gather(*(store.claim("w1", limit=1, lease_seconds=60, now=T0) for _ in range(40)))
        claimed = [c for got in claims for c in got]
        assert sorted(c.message.id for c in claimed) == sorted({c.message.id for c in claimed}) and len(claimed) == 40
        claim_commits = len(transactions.commits)

        sent = [AttemptResult("ops@example.com", Outcome.SENT, 250, "ok")]
        finished = await asyncio.gather(
            *(store.finish_attempt(c.lease, sent, next_attempt_at=None, now=T0 + 1, current=c.message) for c in claimed)
        )
        result_commits = len(transactions.commits) - claim_commits

    assert {m.state.value for m in finished} == {"sent"}
    assert 1 <= claim_commits <= 3, claim_commits
    assert 1 <= result_commits <= 3, result_commits


async def test_a_lost_lease_fails_only_its_own_result_in_a_shared_transaction(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "queue.db") as store:
        await asyncio.gather(*(store.enqueue(message(body=f"n{i}"), now=T0) for i in range(6)))
        claimed = await store.claim("w1", limit=6, lease_seconds=60, now=T0)
        transactions = await _traced(store)
        stale = replace(claimed[2].lease, attempt=claimed[2].lease.attempt + 1)  # a lease this message no longer has
        leases = [stale if i == 2 else c.lease for i, c in enumerate(claimed)]
        sent = [AttemptResult("ops@example.com", Outcome.SENT, 250, "ok")]
        outcomes = await asyncio.gather(
            *(store.finish_attempt(lease, sent, next_attempt_at=None, now=T0 + 1) for lease in leases),
            return_exceptions=True,
        )
        stored = [await store.get(c.message.id) for c in claimed]
    assert isinstance(outcomes[2], LeaseLost)
    assert [m.state.value for m in stored if m is not None] == ["sent", "sent", "sending", "sent", "sent", "sent"]
    assert len(transactions.commits) <= 2, transactions.commits


async def test_a_transaction_holding_an_enqueue_commits_fully_synchronous(tmp_path: Path) -> None:
    """Claims and results need no fsync of their own; sharing a transaction with them must not cost an accepted
    message its fsync."""
    async with SQLiteStore(tmp_path / "queue.db") as store:
        await asyncio.gather(*(store.enqueue(message(body=f"n{i}"), now=T0) for i in range(20)))
        transactions = await _traced(store)
        claims = [store.claim("w1", limit=1, lease_seconds=60, now=T0) for _ in range(20)]
        enqueues = [store.enqueue(message(body=f"m{i}"), now=T0) for i in range(20)]
        await asyncio.gather(*(x for pair in zip(claims, enqueues, strict=True) for x in pair))
    assert any(enqueued for enqueued, _ in transactions.commits)
    assert all(synchronous == "FULL" for enqueued, synchronous in transactions.commits if enqueued), transactions.commits
    assert any(synchronous == "NORMAL" for enqueued, synchronous in transactions.commits if not enqueued)


class _Steps:
    """Virtual-machine steps SQLite takes on the store's connection (a progress handler every step)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> int:
        self.count += 1
        return 0


async def _steps_of(store: SQLiteStore, call: Any) -> int:
    steps = _Steps()
    await store._call(lambda: store._db.set_progress_handler(steps, 1))
    try:
        await call()
    finally:
        await store._call(lambda: store._db.set_progress_handler(None, 1))
    return steps.count


async def test_claiming_and_pausing_one_account_do_not_read_its_whole_backlog(tmp_path: Path) -> None:
    """A paused or backlogged account (an upstream down for a day: tens of thousands of messages) is claimed from and
    deferred again and again; each must cost about the same whatever the backlog, not a pass over all of it."""
    async with SQLiteStore(tmp_path / "queue.db") as store:
        costs: dict[str, list[int]] = {"claim": [], "defer": []}
        for backlog in (3, 3000):
            account = f"mail/backlog-{backlog}"
            await asyncio.gather(*(store.enqueue(message(account), now=T0) for _ in range(backlog)))
            await store.defer_account(account, T0 + 100, now=T0)
            await store.enqueue(message(account), now=T0 + 1)  # arrived during the pause
            costs["defer"].append(await _steps_of(store, lambda a=account: store.defer_account(a, T0 + 100, now=T0 + 2)))
            claim = functools.partial(store.claim, "w", limit=1, lease_seconds=60, now=T0 + 200, accounts=[account])
            costs["claim"].append(await _steps_of(store, claim))
    for what, (small, large) in costs.items():
        assert large < 3 * small, (what, small, large)
