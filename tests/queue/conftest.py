"""Fixtures for the queue store tests: every contract test runs on a SQLite file and on a real PostgreSQL."""

from __future__ import annotations

import gc
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailgate.pool import SMTPPool
from mailgate.queue import QueueStore, open_store
from tests.queue.postgres import PostgresServer

StoreFactory = Callable[..., Awaitable[QueueStore]]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_schema(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh schema per test on the session's server: the isolation of a database at a fraction of the cost."""
    name = f"queue_{secrets.token_hex(6)}"
    postgres_server.create_schema(name)
    yield name
    postgres_server.start_if_stopped()
    postgres_server.drop_schema(name)


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer, postgres_schema: str) -> str:
    return f"{postgres_server.dsn()}?search_path={postgres_schema}"


@pytest.fixture(params=["sqlite", "postgres"])
def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'queue.db'}"
    dsn: str = request.getfixturevalue("postgres_dsn")
    return dsn


@pytest.fixture
async def stores(queue_url: str) -> AsyncIterator[StoreFactory]:
    """Open any number of stores on the test's queue (a second process or replica would do the same)."""
    opened: list[QueueStore] = []

    async def make(**options: Any) -> QueueStore:
        store = await open_store(queue_url, **options)
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


@pytest.fixture
async def store(stores: StoreFactory) -> QueueStore:
    return await stores()


@pytest.fixture
async def pool(upstream_factory: object) -> AsyncIterator[SMTPPool]:
    """The delivery tests' SMTP pool; closed before the test's upstreams stop (it depends on their factory)."""
    smtp_pool = SMTPPool(cleanup_interval=0.05, close_grace=2.0)
    yield smtp_pool
    await smtp_pool.close_all(grace=2.0)
    gc.collect()
