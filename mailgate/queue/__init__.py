"""Durable delivery's storage: one ``QueueStore`` interface (store.py), SQLite and PostgreSQL backends.

``open_store(url)`` picks the backend from the URL:

* ``sqlite:///var/lib/mailgate/queue.db`` (an absolute path) or ``sqlite:queue.db`` (relative
  to the working directory): the embedded default, one replica;
* ``postgresql://user:password@host:5432/db?sslmode=verify-full`` (or ``postgres://``): the
  shared queue of several replicas; the DSN is passed to asyncpg as is.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from mailgate.queue.errors import LeaseLost, QueueError, QueueUnavailable, SchemaTooNew
from mailgate.queue.model import (
    AccountStats,
    AttemptResult,
    ClaimedMessage,
    Lease,
    MessageState,
    NewMessage,
    Outcome,
    Page,
    QueuedMessage,
    RecipientState,
    RecipientStatus,
    Reply,
    StoreCounters,
)
from mailgate.queue.store import QueueStore

__all__ = [
    "AccountStats",
    "AttemptResult",
    "ClaimedMessage",
    "Lease",
    "LeaseLost",
    "MessageState",
    "NewMessage",
    "Outcome",
    "Page",
    "QueueError",
    "QueueStore",
    "QueueUnavailable",
    "QueuedMessage",
    "RecipientState",
    "RecipientStatus",
    "Reply",
    "SchemaTooNew",
    "StoreCounters",
    "open_store",
    "store_for_url",
]


def store_for_url(url: str, **options: Any) -> QueueStore:
    """The store a URL names, not yet opened. ``options`` go to the backend's constructor."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        from mailgate.queue.sqlite import SQLiteStore

        parts = urllib.parse.urlsplit(url)
        if parts.netloc or not parts.path or parts.query:
            raise ValueError("a SQLite queue URL is sqlite:///absolute/path.db or sqlite:relative/path.db")
        return SQLiteStore(urllib.parse.unquote(parts.path), **options)
    if scheme in ("postgresql", "postgres"):
        from mailgate.queue.postgres import PostgresStore

        return PostgresStore(url, **options)
    raise ValueError(f"unsupported queue URL scheme {scheme!r}: use sqlite: or postgresql:")


async def open_store(url: str, **options: Any) -> QueueStore:
    """The store a URL names, opened (schema created or migrated); the caller closes it."""
    store = store_for_url(url, **options)
    await store.open()
    return store
