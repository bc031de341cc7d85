"""SQLite backend: the embedded default for ``mailgate serve`` and single-replica installs.

Driver: the standard library's ``sqlite3`` on one dedicated thread that owns the one
connection. aiosqlite is the same design (a thread per connection fed by a queue) behind an
extra dependency, and it hides the transaction boundaries group commit is about; here every
statement runs on that thread in order, so no lock is needed, and every write waiting while
the thread is busy (a batch of enqueues, claims, results) shares one ``BEGIN IMMEDIATE ...
COMMIT`` (``sqlite_writes.py``).

Durability: ``journal_mode=WAL`` with ``synchronous=FULL``, so COMMIT returns only after the
WAL is fsync'd (``NORMAL`` would lose the last commits on power loss). ``busy_timeout`` lets
another process (a backup, the ``sqlite3`` shell) hold the lock briefly. Several processes
may open the file safely, but wake-ups (``wait_for_work``) are in-process only: one replica
owns a SQLite queue, other openers see new work at their next poll.

Schema versions live in ``PRAGMA user_version`` and are applied in one write transaction,
so two processes opening a new file at once migrate it once.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from mailgate.queue.batching import GroupCommit, Pending
from mailgate.queue.errors import LeaseLost, QueueUnavailable, SchemaTooNew
from mailgate.queue.model import (
    AccountStats,
    AttemptResult,
    ClaimedMessage,
    Lease,
    MessageState,
    NewMessage,
    Page,
    QueuedMessage,
    RecipientState,
    RecipientStatus,
    Reply,
    StoreCounters,
)
from mailgate.queue.outcome import after_attempt, plan_attempt
from mailgate.queue.rows import MESSAGE_COLUMNS, RECIPIENT_COLUMNS, message_from_row, recipients_by_message, stats_from_rows
from mailgate.queue.sqlite_writes import SharedTransactions, in_write_transaction
from mailgate.queue.store import CANCELLED_REASON, EXPIRED_REASON, QueueStore
from mailgate.queue.timing import WaitForWork, clock

T = TypeVar("T")

PENDING = "state IN ('queued', 'deferred', 'sending')"  # spelled as in the partial indexes, so they apply
UNLEASED = "(state IN ('queued', 'deferred') OR (state = 'sending' AND next_attempt_at <= :now))"

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: messages, recipients one row each, the body once
        """CREATE TABLE mailgate_messages (
            id TEXT PRIMARY KEY,
            account TEXT NOT NULL,
            sender TEXT NOT NULL,
            message_id TEXT NOT NULL,
            smtputf8 INTEGER NOT NULL,
            idempotency_key TEXT,
            retry_unknown INTEGER NOT NULL,
            size INTEGER NOT NULL,
            state TEXT NOT NULL,
            created_at REAL NOT NULL,
            next_attempt_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_code INTEGER,
            last_message TEXT,
            lease_owner TEXT,
            finished_at REAL,
            UNIQUE (account, idempotency_key)
        ) WITHOUT ROWID""",
        """CREATE TABLE mailgate_recipients (
            message_id TEXT NOT NULL REFERENCES mailgate_messages (id),
            position INTEGER NOT NULL,
            address TEXT NOT NULL,
            state TEXT NOT NULL,
            code INTEGER,
            message TEXT NOT NULL DEFAULT '',
            attempts INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (message_id, position)
        ) WITHOUT ROWID""",
        """CREATE TABLE mailgate_bodies (
            message_id TEXT PRIMARY KEY REFERENCES mailgate_messages (id),
            data BLOB NOT NULL
        )""",
        f"CREATE INDEX mailgate_messages_due ON mailgate_messages (next_attempt_at, id) WHERE {PENDING}",
        f"CREATE INDEX mailgate_messages_expiry ON mailgate_messages (expires_at) WHERE {PENDING}",
        "CREATE INDEX mailgate_messages_account ON mailgate_messages (account, id)",
        "CREATE INDEX mailgate_messages_account_state ON mailgate_messages (account, state, id)",
        "CREATE INDEX mailgate_messages_finished ON mailgate_messages (finished_at) WHERE finished_at IS NOT NULL",
    ),
    (  # 2: each account's first due time in one index seek, for due_accounts
        f"CREATE INDEX mailgate_messages_account_due ON mailgate_messages (account, next_attempt_at) WHERE {PENDING}",
    ),
)
# The accounts with due messages, longest-waiting first, without reading every pending message: a loose index scan
# visits each account with pending messages once (min(account) > the previous one), then its first due time.
DUE_ACCOUNTS = f"""WITH RECURSIVE accounts(account) AS (
        SELECT min(account) FROM mailgate_messages WHERE {PENDING}
        UNION ALL
        SELECT (SELECT min(account) FROM mailgate_messages WHERE {PENDING} AND account > accounts.account)
        FROM accounts WHERE accounts.account IS NOT NULL),
    due AS (
        SELECT account, (SELECT min(next_attempt_at) FROM mailgate_messages WHERE {PENDING} AND account = accounts.account)
            AS first_due
        FROM accounts WHERE account IS NOT NULL)
    SELECT account FROM due WHERE first_due <= ? ORDER BY first_due, account LIMIT ?"""
SCHEMA_VERSION = len(MIGRATIONS)


class SQLiteStore(QueueStore):
    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_seconds: float = 10.0) -> None:
        self.path = Path(path)
        self.counters = StoreCounters()
        self._busy_timeout = busy_timeout_seconds
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # used on the executor thread only
        self._writer: GroupCommit | None = None
        self._shared: SharedTransactions | None = None
        self._work = WaitForWork()

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        if self._writer is not None:  # already open (e.g. open_store, then `async with`)
            return
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="mailgate-queue-sqlite")
        try:
            await self._call(self._connect)
        except BaseException:
            self._executor.shutdown()
            self._executor = None
            raise
        self._shared = SharedTransactions(self._call, lambda: self._db)
        self._shared.start()
        self._writer = GroupCommit(self._commit_batch, self.counters)
        self._writer.start()

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.close()
            self._writer = None
        if self._shared is not None:
            await self._shared.close()
            self._shared = None
        if self._executor is not None:
            await self._call(self._disconnect)
            self._executor.shutdown()
            self._executor = None

    def _connect(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=self._busy_timeout)
        try:
            mode = self._enter_wal(conn)
            if mode != "wal":
                raise QueueUnavailable(f"SQLite refused WAL mode for the queue file (journal_mode={mode})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            in_write_transaction(conn, lambda: _migrate(conn))
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _enter_wal(self, conn: sqlite3.Connection) -> str:
        """``PRAGMA journal_mode=WAL``, waiting out another process's lock as every other statement does.

        SQLite answers "database is locked" at once, without its busy handler, when another
        connection holds a lock on a file not yet in WAL mode: replicas opening one new file
        together (one of them migrating it) would otherwise fail to start.
        """
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                mode: str = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                return mode
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise QueueUnavailable("the queue store is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except sqlite3.OperationalError as exc:  # locked, I/O error, disk full: the storage, not the caller
            raise QueueUnavailable(f"SQLite: {exc}") from exc

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the store's thread inside a write transaction that fsyncs before it returns."""
        return await self._transactions().write(lambda: fn(*args), durable=True)

    async def _write_lazy(self, fn: Callable[..., T], *args: Any) -> T:
        """Like ``_write``, without an fsync of its own (``synchronous=NORMAL``) unless it shares its transaction
        with a durable write: for delivery bookkeeping, whose loss on power failure means a redelivery, never a
        lost message. The WAL is sequential, so the next durable commit (an enqueue) syncs this one too."""
        return await self._transactions().write(lambda: fn(*args), durable=False)

    def _transactions(self) -> SharedTransactions:
        if self._shared is None:
            raise QueueUnavailable("the queue store is not open")
        return self._shared

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise QueueUnavailable("the queue store is not open")
        return self._conn

    # -- enqueue -----------------------------------------------------------------------------

    async def enqueue(self, message: NewMessage, *, now: float | None = None) -> str:
        if self._writer is None:
            raise QueueUnavailable("the queue store is not open")
        return await self._writer.submit(message, clock(now))

    async def _commit_batch(self, batch: Sequence[Pending]) -> list[str]:
        ids = await self._write(self._insert, batch)
        self._work.wake()
        return ids

    def _insert(self, batch: Sequence[Pending]) -> list[str]:
        """One batch of enqueues: three executemany calls, plus a look-up per idempotency key."""
        existing: dict[str, str] = {}
        for item in batch:
            if item.message.idempotency_key is not None:
                row = self._db.execute(
                    "SELECT id FROM mailgate_messages WHERE account = ? AND idempotency_key = ?",
                    (item.message.account, item.message.idempotency_key),
                ).fetchone()
                if row is not None:
                    existing[item.id] = row[0]
        new = [item for item in batch if item.id not in existing]
        self._db.executemany(
            "INSERT INTO mailgate_messages (id, account, sender, message_id, smtputf8, idempotency_key, retry_unknown, size,"
            " state, created_at, next_attempt_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
            [
                (
                    item.id, m.account, m.sender, m.message_id, m.smtputf8, m.idempotency_key, m.retry_unknown, len(m.data),
                    item.created_at, item.created_at, item.created_at + m.max_age_seconds,
                )
                for item in new
                for m in (item.message,)
            ],
        )  # fmt: skip
        self._db.executemany(
            "INSERT INTO mailgate_bodies (message_id, data) VALUES (?, ?)", [(item.id, item.message.data) for item in new]
        )
        self._db.executemany(
            "INSERT INTO mailgate_recipients (message_id, position, address, state) VALUES (?, ?, ?, 'pending')",
            [(item.id, position, address) for item in new for position, address in enumerate(item.message.recipients)],
        )
        return [existing.get(item.id, item.id) for item in batch]

    # -- reads -------------------------------------------------------------------------------

    async def get(self, message_id: str) -> QueuedMessage | None:
        found = await self._call(self._load, [message_id])
        return found[0] if found else None

    async def data(self, message_id: str) -> bytes:
        row = await self._call(self._fetchone, "SELECT data FROM mailgate_bodies WHERE message_id = ?", (message_id,))
        if row is None:
            raise KeyError(message_id)
        return bytes(row[0])

    async def list_messages(
        self, account: str, *, state: MessageState | None = None, limit: int = 100, after_id: str | None = None
    ) -> Page:
        return await self._call(self._list, account, state, limit, after_id)

    def _list(self, account: str, state: MessageState | None, limit: int, after_id: str | None) -> Page:
        sql = "SELECT id FROM mailgate_messages WHERE account = ? AND id > ?"
        params: list[Any] = [account, after_id or ""]
        if state is not None:
            sql += " AND state = ?"
            params.append(state.value)
        ids = [row[0] for row in self._db.execute(sql + " ORDER BY id LIMIT ?", (*params, limit + 1))]
        items = self._load(ids[:limit])
        return Page(items, items[-1].id if len(ids) > limit else None)

    async def stats(self) -> dict[str, AccountStats]:
        rows = await self._call(
            self._fetchall,
            f"SELECT account, state, count(*), min(created_at) FROM mailgate_messages WHERE {PENDING} GROUP BY account, state",
            (),
        )
        return stats_from_rows(rows)

    async def due_accounts(self, *, now: float | None = None, limit: int = 1000) -> list[str]:
        rows = await self._call(self._fetchall, DUE_ACCOUNTS, (clock(now), limit))
        return [row[0] for row in rows]

    async def next_due(self, *, after: float | None = None) -> float | None:
        later = "" if after is None else " AND next_attempt_at > ?"
        query = f"SELECT min(next_attempt_at) FROM mailgate_messages WHERE {PENDING}{later}"
        row = await self._call(self._fetchone, query, () if after is None else (after,))
        return None if row is None else row[0]

    async def wait_for_work(self, timeout: float) -> bool:
        return await self._work.wait(timeout)

    def _fetchone(self, sql: str, params: Sequence[Any]) -> Any:
        return self._db.execute(sql, params).fetchone()

    def _fetchall(self, sql: str, params: Sequence[Any]) -> list[Any]:
        return self._db.execute(sql, params).fetchall()

    def _load(self, ids: Sequence[str]) -> list[QueuedMessage]:
        """Messages with their recipients, in the order of ``ids`` (unknown ids skipped)."""
        if not ids:
            return []
        id_list = json.dumps(list(ids))
        rows = {
            row[0]: row
            for row in self._db.execute(
                f"SELECT {MESSAGE_COLUMNS} FROM mailgate_messages WHERE id IN (SELECT value FROM json_each(?))", (id_list,)
            )
        }
        recipients = self._recipients(id_list)
        return [message_from_row(rows[i], recipients.get(i, ())) for i in ids if i in rows]

    def _recipients(self, id_list: str) -> dict[str, list[RecipientState]]:
        """The recipients of the messages in ``id_list`` (a JSON array), in position order."""
        return recipients_by_message(
            self._db.execute(
                f"SELECT {RECIPIENT_COLUMNS} FROM mailgate_recipients WHERE message_id IN (SELECT value FROM json_each(?))"
                " ORDER BY message_id, position",
                (id_list,),
            )
        )

    # -- delivery ----------------------------------------------------------------------------

    async def claim(
        self,
        owner: str,
        *,
        limit: int,
        lease_seconds: float,
        now: float | None = None,
        accounts: Collection[str] | None = None,
    ) -> list[ClaimedMessage]:
        return await self._write_lazy(self._claim, owner, limit, clock(now), lease_seconds, accounts)

    def _claim(
        self, owner: str, limit: int, now: float, lease_seconds: float, accounts: Collection[str] | None
    ) -> list[ClaimedMessage]:
        """Four statements however many messages: which are due, lease them (returning their rows), their
        recipients, their bodies."""
        sql = f"SELECT id FROM mailgate_messages WHERE {PENDING} AND next_attempt_at <= :now"
        params: dict[str, Any] = {"now": now, "limit": limit}
        if accounts is not None and len(accounts) == 1:  # the delivery loop's claim: the index is in due order
            sql += " AND account = :account"
            (params["account"],) = accounts
        elif accounts is not None:
            sql += " AND account IN (SELECT value FROM json_each(:accounts))"
            params["accounts"] = json.dumps(list(accounts))
        ids = [row[0] for row in self._db.execute(sql + " ORDER BY next_attempt_at, id LIMIT :limit", params)]
        if not ids:
            return []
        id_list = json.dumps(ids)
        leased = {
            row[0]: row
            for row in self._db.execute(
                "UPDATE mailgate_messages SET state = 'sending', lease_owner = ?, next_attempt_at = ?,"
                f" attempts = attempts + 1 WHERE id IN (SELECT value FROM json_each(?)) RETURNING {MESSAGE_COLUMNS}",
                (owner, now + lease_seconds, id_list),
            )
        }
        recipients = self._recipients(id_list)
        bodies = dict(
            self._db.execute(
                "SELECT message_id, data FROM mailgate_bodies WHERE message_id IN (SELECT value FROM json_each(?))", (id_list,)
            )
        )
        claimed = []
        for message_id in ids:
            message = message_from_row(leased[message_id], recipients.get(message_id, ()))
            lease = Lease(message_id, owner, message.attempts, message.next_attempt_at)
            claimed.append(ClaimedMessage(message, lease, bytes(bodies[message_id])))
        return claimed

    async def extend_lease(self, lease: Lease, *, lease_seconds: float, now: float | None = None) -> Lease:
        until = clock(now) + lease_seconds
        await self._write_lazy(self._extend, lease, until)
        return Lease(lease.message_id, lease.owner, lease.attempt, until)

    def _extend(self, lease: Lease, until: float) -> None:
        self._check_lease(lease)
        self._db.execute("UPDATE mailgate_messages SET next_attempt_at = ? WHERE id = ?", (until, lease.message_id))

    async def finish_attempt(
        self,
        lease: Lease,
        results: Sequence[AttemptResult],
        *,
        next_attempt_at: float | None,
        reply: Reply | None = None,
        now: float | None = None,
        current: QueuedMessage | None = None,
    ) -> QueuedMessage:
        message = await self._write_lazy(self._finish, lease, results, next_attempt_at, reply, clock(now), current)
        if message.state is MessageState.DEFERRED:
            self._work.wake()
        return message

    def _finish(
        self,
        lease: Lease,
        results: Sequence[AttemptResult],
        next_attempt_at: float | None,
        reply: Reply | None,
        now: float,
        current: QueuedMessage | None,
    ) -> QueuedMessage:
        """Planned from ``current`` when the caller has it (the message as claimed: nobody else changes a leased
        message, and the lease check comes first), so the message is neither read before nor after."""
        self._check_lease(lease)
        if current is None or current.id != lease.message_id:
            (current,) = self._load([lease.message_id])
        plan = plan_attempt(current.recipients, results, next_attempt_at, reply)
        self._db.executemany(
            "UPDATE mailgate_recipients SET state = ?, code = ?, message = ?, attempts = ? WHERE message_id = ? AND position = ?",
            [_recipient_update(plan.recipients[i], lease.message_id, i) for i in plan.changed],
        )
        last = plan.last_reply or current.last_reply
        code, text = last if last else (None, None)
        deferred = plan.state is MessageState.DEFERRED
        if deferred:
            self._db.execute(
                "UPDATE mailgate_messages SET state = 'deferred', lease_owner = NULL, next_attempt_at = ?, last_code = ?,"
                " last_message = ? WHERE id = ?",
                (next_attempt_at, code, text, lease.message_id),
            )
        else:
            self._db.execute(
                "UPDATE mailgate_messages SET state = ?, lease_owner = NULL, finished_at = ?, last_code = ?, last_message = ?"
                " WHERE id = ?",
                (plan.state.value, now, code, text, lease.message_id),
            )
        return after_attempt(current, plan, next_attempt_at, lease.expires_at, now)

    def _check_lease(self, lease: Lease) -> None:
        row = self._db.execute(
            "SELECT state, lease_owner, attempts FROM mailgate_messages WHERE id = ?", (lease.message_id,)
        ).fetchone()
        if row is None or tuple(row) != ("sending", lease.owner, lease.attempt):
            raise LeaseLost(f"message {lease.message_id}: the lease of attempt {lease.attempt} no longer holds")

    async def defer_account(
        self,
        account: str,
        until: float,
        *,
        reply: Reply | None = None,
        now: float | None = None,
        created_since: float | None = None,
    ) -> int:
        moved = await self._write(self._defer_account, account, until, reply, clock(now), created_since)
        if moved:
            self._work.wake()
        return moved

    def _defer_account(self, account: str, until: float, reply: Reply | None, now: float, created_since: float | None) -> int:
        params: dict[str, object] = {"account": account, "until": until, "now": now, "since": created_since}
        set_reply = ""
        if reply is not None:
            set_reply = ", last_code = :code, last_message = :text"
            params.update(code=reply.code, text=reply.message)
        since = "" if created_since is None else " AND created_at >= :since"
        cursor = self._db.execute(
            f"UPDATE mailgate_messages SET state = 'deferred', lease_owner = NULL, next_attempt_at = :until{set_reply}"
            f" WHERE account = :account AND next_attempt_at < :until AND {PENDING} AND {UNLEASED}{since}",  # PENDING: the index
            params,
        )
        return cursor.rowcount

    async def retry_now(self, account: str, *, now: float | None = None) -> int:
        moved = await self._write(self._retry_now, account, clock(now))
        if moved:
            self._work.wake()
        return moved

    def _retry_now(self, account: str, now: float) -> int:
        cursor = self._db.execute(
            "UPDATE mailgate_messages SET next_attempt_at = ? WHERE account = ? AND state = 'deferred' AND next_attempt_at > ?",
            (now, account, now),
        )
        return cursor.rowcount

    async def cancel(self, message_id: str, *, now: float | None = None) -> bool:
        return bool(await self._write(self._finish_unleased, [message_id], MessageState.CANCELLED, CANCELLED_REASON, clock(now)))

    async def release_leases(self, owner: str, *, now: float | None = None) -> int:
        return await self._write(self._release_leases, owner, clock(now))

    def _release_leases(self, owner: str, now: float) -> int:
        sql = (
            "UPDATE mailgate_messages SET next_attempt_at = ?"
            " WHERE state = 'sending' AND lease_owner = ? AND next_attempt_at > ?"
        )
        return self._db.execute(sql, (now, owner, now)).rowcount

    async def expire(self, *, now: float | None = None) -> list[str]:
        return await self._write(self._expire, clock(now))

    def _expire(self, now: float) -> list[str]:
        ids = [
            row[0]
            for row in self._db.execute(
                f"SELECT id FROM mailgate_messages WHERE {PENDING} AND expires_at <= :now AND {UNLEASED}", {"now": now}
            )
        ]
        return self._finish_unleased(ids, MessageState.FAILED, EXPIRED_REASON, now)

    def _finish_unleased(self, ids: Sequence[str], state: MessageState, reason: str, now: float) -> list[str]:
        """Move unleased pending messages to a final state; their pending recipients fail with ``reason``."""
        done = []
        for message_id in ids:
            cursor = self._db.execute(
                "UPDATE mailgate_messages SET state = :state, lease_owner = NULL, finished_at = :now"
                f" WHERE id = :id AND {UNLEASED}",
                {"state": state.value, "now": now, "id": message_id},
            )
            if cursor.rowcount:
                self._db.execute(
                    "UPDATE mailgate_recipients SET state = ?, code = NULL, message = ? WHERE message_id = ? AND state = ?",
                    (RecipientStatus.FAILED.value, reason, message_id, RecipientStatus.PENDING.value),
                )
                done.append(message_id)
        return done

    async def purge(self, *, finished_before: float, limit: int = 1000) -> int:
        return await self._write(self._purge, finished_before, limit)

    def _purge(self, finished_before: float, limit: int) -> int:
        rows = self._db.execute(
            "SELECT id FROM mailgate_messages WHERE finished_at < ? ORDER BY finished_at LIMIT ?", (finished_before, limit)
        )
        ids = json.dumps([row[0] for row in rows])
        for table in ("mailgate_recipients", "mailgate_bodies"):
            self._db.execute(f"DELETE FROM {table} WHERE message_id IN (SELECT value FROM json_each(?))", (ids,))
        return self._db.execute("DELETE FROM mailgate_messages WHERE id IN (SELECT value FROM json_each(?))", (ids,)).rowcount


def _migrate(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(f"the queue file has schema version {version}; this gateway knows up to {SCHEMA_VERSION}")
    for statements in MIGRATIONS[version:]:
        for statement in statements:
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _recipient_update(r: RecipientState, message_id: str, position: int) -> tuple[Any, ...]:
    return (r.state.value, r.code, r.message, r.attempts, message_id, position)
