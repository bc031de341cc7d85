"""What only the SQLite backend promises: its durability settings, its schema versioning, its URLs."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from mailgate.queue import SchemaTooNew, open_store, store_for_url
from mailgate.queue.sqlite import SCHEMA_VERSION, SQLiteStore
from tests.queue.support import message


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
