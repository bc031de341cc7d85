"""Shared SQLite write transactions under generated mixes of writes that succeed and fail part-way.

The promise (mailgate/queue/sqlite_writes.py): writes that wait together commit together, and a
write that fails leaves nothing behind while its batch mates commit, whatever statement it
failed at. A real SQLite file on a real thread, as the store runs it.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.queue.errors import QueueUnavailable
from mailgate.queue.sqlite_writes import SharedTransactions


class Refused(Exception):
    """A write's own failure (what LeaseLost is to a result)."""


# A write: how many rows it inserts, and how it ends: "ok", "raise" after its inserts, or "duplicate" (its last
# insert hits a key an earlier statement of the same write took: a constraint failure inside SQLite).
WRITES = st.lists(st.tuples(st.integers(1, 4), st.sampled_from(["ok", "raise", "duplicate"]), st.booleans()), max_size=30)


def _insert_rows(db: sqlite3.Connection, n: int, rows: int, ending: str) -> str:
    for r in range(rows):
        db.execute("INSERT INTO t (k) VALUES (?)", (f"{n}-{r}",))
    if ending == "raise":
        raise Refused(n)
    if ending == "duplicate":
        db.execute("INSERT INTO t (k) VALUES (?)", (f"{n}-0",))
    return f"done {n}"


async def _run(path: Path, writes: list[tuple[int, str, bool]]) -> tuple[list[Any], set[str], list[str]]:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY)")
    db.execute("DELETE FROM t")
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    executor = ThreadPoolExecutor(1)

    async def on_thread(fn: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(executor, fn)

    shared = SharedTransactions(on_thread, lambda: db)
    shared.start()
    try:
        outcomes = await asyncio.gather(
            *(
                shared.write(functools.partial(_insert_rows, db, n, rows, ending), durable=durable)
                for n, (rows, ending, durable) in enumerate(writes)
            ),
            return_exceptions=True,
        )
    finally:
        await shared.close()
        executor.shutdown()
    db.set_trace_callback(None)
    stored = {row[0] for row in db.execute("SELECT k FROM t")}
    db.close()
    return outcomes, stored, statements


@settings(max_examples=60, deadline=None)
@given(writes=WRITES)
def test_a_failing_write_leaves_nothing_and_its_batch_mates_commit(writes: list[tuple[int, str, bool]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        outcomes, stored, statements = asyncio.run(_run(Path(folder) / "t.db", writes))
    expected: set[str] = set()
    for n, ((rows, ending, _), outcome) in enumerate(zip(writes, outcomes, strict=True)):
        if ending == "ok":
            assert outcome == f"done {n}"
            expected |= {f"{n}-{r}" for r in range(rows)}
        elif ending == "raise":
            assert isinstance(outcome, Refused)
        else:
            assert isinstance(outcome, sqlite3.IntegrityError), outcome
    assert stored == expected
    commits = statements.count("COMMIT")
    assert commits <= 1 if writes else commits == 0  # all submitted at once: one transaction
    if any(durable for _, _, durable in writes):
        assert "PRAGMA synchronous=NORMAL" not in statements


async def test_a_transaction_that_cannot_begin_fails_every_write_in_it(tmp_path: Path) -> None:
    """Another process holding the write lock past the busy timeout: nobody is told their write committed."""
    path = tmp_path / "t.db"
    setup = sqlite3.connect(path, isolation_level=None)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0.05)
    executor = ThreadPoolExecutor(1)

    async def on_thread(fn: Any) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, fn)
        except sqlite3.OperationalError as exc:
            raise QueueUnavailable(f"SQLite: {exc}") from exc

    shared = SharedTransactions(on_thread, lambda: db)
    shared.start()
    setup.execute("BEGIN IMMEDIATE")  # holds the write lock
    try:
        outcomes = await asyncio.gather(
            *(shared.write(functools.partial(_insert_rows, db, n, 1, "ok"), durable=True) for n in range(5)),
            return_exceptions=True,
        )
    finally:
        setup.execute("ROLLBACK")
        await shared.close()
        executor.shutdown()
    assert all(isinstance(o, QueueUnavailable) for o in outcomes), outcomes
    assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 0
    db.close()
    setup.close()
