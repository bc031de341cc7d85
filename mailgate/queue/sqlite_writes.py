"""Shared write transactions for the SQLite store: the writes waiting while its thread is busy commit together.

The store has one connection on one thread. A claim or a delivery result written alone costs a
BEGIN, a COMMIT carrying every page it touched (the same few index pages for every message) and
a thread hop there and back; at a thousand messages a second that was most of the thread's time,
and every delivery slot waited behind the others' commits. Here each write joins a list; a single
task takes everything waiting and runs it on the thread in one transaction, so N writes cost one
commit and one hop, and the batch grows with the load by itself (one write alone commits at once).

Each write runs inside its own SAVEPOINT: one that fails (a lost lease, a constraint) is rolled
back alone and its caller gets the exception, while the others commit. A failure of the
transaction itself (BEGIN or COMMIT: locked, I/O error, disk full) fails every write in it.

Durability: a write is ``durable`` (an acceptance, a cancellation) or not (delivery bookkeeping,
whose loss in a power failure means a redelivery, never a lost message). A transaction holding
any durable write commits with ``synchronous=FULL`` (the WAL is fsync'd before COMMIT returns);
one holding only bookkeeping commits with ``NORMAL``. Nobody is answered before the transaction
holding their write has committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from mailgate.queue.batching import SingleWriter
from mailgate.queue.errors import QueueError, QueueUnavailable

T = TypeVar("T")

MAX_WRITES_PER_TRANSACTION = 256  # bounds how long the first write of a burst waits for the last


@dataclass
class _Write:
    run: Callable[[], Any]
    durable: bool
    future: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass(frozen=True)
class _Done:
    value: Any = None
    error: BaseException | None = None


OnThread = Callable[[Callable[[], list[_Done]]], Awaitable[list[_Done]]]


class SharedTransactions(SingleWriter[_Write]):
    """Batches writes for one connection. ``on_thread(fn)`` runs ``fn`` on the connection's thread;
    ``connection()`` returns the connection there."""

    MAX_ITEMS = MAX_WRITES_PER_TRANSACTION
    TASK_NAME = "queue-sqlite-writes"

    def __init__(self, on_thread: OnThread, connection: Callable[[], sqlite3.Connection]) -> None:
        super().__init__()
        self._on_thread = on_thread
        self._connection = connection

    async def write(self, run: Callable[[], T], *, durable: bool) -> T:
        """Run ``run()`` on the thread inside a write transaction; its result once that transaction committed."""
        result: T = await self._submit(_Write(run, durable))
        return result

    async def _commit_batch(self, batch: list[_Write]) -> None:
        try:
            done = await self._on_thread(lambda: self._transaction(batch))
        except Exception as exc:  # the transaction itself failed: nothing of it was committed
            error = exc if isinstance(exc, QueueError) else QueueUnavailable(f"SQLite: {exc}")
            done = [_Done(error=error)] * len(batch)
        for item, outcome in zip(batch, done, strict=True):
            with contextlib.suppress(asyncio.InvalidStateError):  # the caller was cancelled meanwhile
                if outcome.error is not None:
                    item.future.set_exception(outcome.error)
                else:
                    item.future.set_result(outcome.value)

    def _transaction(self, batch: Sequence[_Write]) -> list[_Done]:
        """On the thread: one transaction, a savepoint per write."""
        db = self._connection()
        lazy = not any(item.durable for item in batch)
        if lazy:
            db.execute("PRAGMA synchronous=NORMAL")
        try:
            return in_write_transaction(db, lambda: [self._one(db, item) for item in batch])
        finally:
            if lazy:
                db.execute("PRAGMA synchronous=FULL")

    @staticmethod
    def _one(db: sqlite3.Connection, item: _Write) -> _Done:
        db.execute("SAVEPOINT write")
        try:
            value = item.run()
        except Exception as exc:
            db.execute("ROLLBACK TO write")
            db.execute("RELEASE write")
            if isinstance(exc, sqlite3.OperationalError):  # the storage (I/O error, disk full), not the write
                return _Done(error=QueueUnavailable(f"SQLite: {exc}"))
            return _Done(error=exc)
        db.execute("RELEASE write")
        return _Done(value)


def in_write_transaction(conn: sqlite3.Connection, work: Callable[[], T]) -> T:
    """Run ``work`` in one write transaction (BEGIN IMMEDIATE takes the write lock up front)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work()
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result
