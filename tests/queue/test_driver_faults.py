"""Errors of the database driver that are not connection errors must not stop delivery.

Found by ``test_gateway_e2e.py``'s PostgreSQL restart (about one run in nine): as the server
shut down, handing a connection back to asyncpg's pool failed with ``InternalClientError``
("cannot switch to state 15; another operation (2) is in progress"). It escaped
``PostgresStore`` as a non-``QueueError``, ended ``DeliveryWorker.run`` silently, and the
gateway went on answering 202 while delivering nothing until it was restarted.
These tests cause the same failures on purpose, deterministically.
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import pytest

from mailgate.pool import SMTPPool
from mailgate.queue import MessageState, QueueStore, open_store
from mailgate.queue.delivery import DeliveryWorker
from mailgate.queue.errors import QueueUnavailable
from mailgate.queue.pool_send import pool_send
from mailgate.queue.retry import RetryPolicy
from tests.queue.postgres import PostgresServer
from tests.queue.support import message
from tests.smtp_servers import Upstream, settings_for

ACCOUNT = "mail/alerts"
FAST = RetryPolicy(first_delay=0.2, max_delay=0.4, busy_delay=0.1)


class FatalInjector:
    """A TCP relay to PostgreSQL that can slip a FATAL error in right after a complete reply.

    What a server shutting down does (``pg_ctl stop -m fast`` sends every backend's client
    "terminating connection due to administrator command"), minus the close of the socket that
    normally follows at once: asyncpg reads the error while idle, and the connection is left in
    a state where its next statement, or the reset that hands it back to the pool, fails with
    ``InternalClientError``. Here that state is reached every time, not one run in nine.
    """

    FATAL = b"SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0\0"

    def __init__(self, port: int) -> None:
        self.target = port
        self.armed = False
        self.injected = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> FatalInjector:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target)
        for task in (self._pipe(client_reader, server_writer), self._replies(server_reader, client_writer)):
            running = asyncio.create_task(task)
            self._tasks.add(running)
            running.add_done_callback(self._tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        writer.close()

    async def _replies(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Server to client, message by message (sslmode=disable: no SSL answer byte before them)."""
        pending = b""
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                pending += chunk
                out = b""
                while len(pending) >= 5 and len(pending) >= 1 + int.from_bytes(pending[1:5], "big"):
                    size = 1 + int.from_bytes(pending[1:5], "big")
                    message_bytes, pending = pending[:size], pending[size:]
                    out += message_bytes
                    if self.armed and message_bytes[:1] == b"Z":  # ReadyForQuery: the reply is complete
                        self.armed = False
                        self.injected += 1
                        out += b"E" + (4 + len(self.FATAL)).to_bytes(4, "big") + self.FATAL  # same write, same read
                writer.write(out)
                await writer.drain()
        writer.close()


async def test_a_connection_killed_between_statements_is_a_queue_outage_not_a_crash(
    postgres_server: PostgresServer, postgres_schema: str
) -> None:
    """A FATAL read while a pooled connection is idle (before the server closes the socket): the next
    statement on that connection fails (connections go back to the pool without a reset query, which
    would have met it first). That is the queue being unreachable for a moment, never an error the
    store's callers do not expect; the pool is recycled and the next call works."""
    async with FatalInjector(postgres_server.port) as proxy:
        dsn = postgres_server.dsn().replace(f":{postgres_server.port}/", f":{proxy.port}/")
        store = await open_store(f"{dsn}?search_path={postgres_schema}&sslmode=disable", pool_size=1)
        try:
            message_id = await store.enqueue(message())
            proxy.armed = True
            assert await store.next_due() is not None  # answered; the FATAL after it leaves the connection dead
            assert proxy.injected == 1
            with pytest.raises(QueueUnavailable):
                await store.next_due()  # its next statement meets the dead connection
            await store.next_due()  # a new connection
            proxy.armed = True
            with pytest.raises(QueueUnavailable):
                await store.get(message_id)  # the second of its statements meets the dead connection
            stored = await store.get(message_id)
            assert proxy.injected == 2 and stored is not None and stored.state is MessageState.QUEUED
        finally:
            await store.close()


async def test_an_unexpected_store_error_does_not_end_the_delivery_loop(
    postgres_dsn: str, pool: SMTPPool, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever a store call raises, the loop logs it and carries on: a loop that ends leaves every
    accepted message undelivered, with nothing but a 202 to show for it."""
    pool.configure(ACCOUNT, settings_for(upstream))
    async with await open_store(postgres_dsn) as store:
        real_due_accounts = store.due_accounts
        failures = [asyncpg.exceptions.InternalClientError("cannot switch to state 15; another operation (2) is in progress")]

        async def due_accounts(**kwargs: object) -> list[str]:
            if failures:
                raise failures.pop()
            return await real_due_accounts(**kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(store, "due_accounts", due_accounts)
        message_id = await store.enqueue(message())
        worker = DeliveryWorker(
            store, pool_send(pool, acquire_timeout=5.0), owner="w", policy=FAST, serves=lambda _: True, min_wait=0.02
        )
        task = asyncio.create_task(worker.run())
        try:
            await until_sent(store, message_id, task)
        finally:
            worker.stop()
            await asyncio.wait_for(task, 10)
    assert failures == [] and len(upstream.messages) == 1


async def until_sent(store: QueueStore, message_id: str, task: asyncio.Task[None]) -> None:
    async with asyncio.timeout(15):
        while True:
            assert not task.done(), f"the delivery loop ended: {task.exception() if not task.cancelled() else 'cancelled'}"
            stored = await store.get(message_id)
            if stored is not None and stored.state is MessageState.SENT:
                return
            await asyncio.sleep(0.02)
