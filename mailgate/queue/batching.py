"""Group commit: concurrent enqueues share one transaction, so one fsync acknowledges many messages.

A durable commit costs one WAL flush (about a millisecond on an SSD, ten on a cloud disk);
one per message caps acceptance at the disk's flush rate. Here every ``enqueue`` puts its
message in a list and waits; a single writer task takes everything waiting (up to a size
cap), commits it in one transaction and then resolves each caller. While one batch is being
flushed, the next one gathers, so the batch size follows the load by itself: one message
alone commits at once, a thousand concurrent ones commit in a handful of transactions.
No caller is answered before the transaction holding its message committed.

``SingleWriter`` is that writer task, shared with SQLite's batched transactions
(``sqlite_writes.py``).

A caller cancelled before its message was taken into a batch leaves nothing behind; one
cancelled later may find its message stored (and delivered): the same window as a client
whose connection drops after its 202 was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from mailgate.queue.errors import QueueError, QueueUnavailable
from mailgate.queue.ids import new_id
from mailgate.queue.model import NewMessage, StoreCounters

log = logging.getLogger(__name__)

MAX_BATCH_MESSAGES = 1000
MAX_BATCH_BYTES = 32 * 1024 * 1024


@dataclass
class Pending:
    """One message waiting for its batch; the backend inserts it under ``id`` at ``created_at``."""

    message: NewMessage
    created_at: float
    id: str = field(default_factory=new_id)
    future: asyncio.Future[str] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


CommitBatch = Callable[[Sequence[Pending]], Awaitable[list[str]]]


class _Waiting(Protocol):
    future: asyncio.Future[Any]


W = TypeVar("W", bound=_Waiting)


class SingleWriter(Generic[W]):
    """One task that takes everything waiting and hands it to ``_commit_batch``, batch after batch.

    While one batch is being written the next one gathers, so the batch size follows the load
    by itself. An item whose caller was cancelled before it was taken is dropped; ``close``
    writes what is already waiting, then stops. Subclasses bound a batch with ``MAX_ITEMS``,
    and ``MAX_WEIGHT`` of ``_weight`` (the first item always goes, however heavy).
    """

    MAX_ITEMS = 1000
    MAX_WEIGHT = float("inf")
    TASK_NAME = "queue-writer"

    def __init__(self) -> None:
        self._pending: deque[W] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.TASK_NAME)

    async def _submit(self, item: W) -> Any:
        if self._closing or self._task is None:
            raise QueueUnavailable("the queue store is not open")
        self._pending.append(item)
        self._wake.set()
        return await item.future

    async def close(self) -> None:
        """Write what is already waiting, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._take()
                if batch:
                    await self._commit_batch(batch)
            if self._closing:
                return

    def _take(self) -> list[W]:
        batch: list[W] = []
        weight = 0.0
        while self._pending and len(batch) < self.MAX_ITEMS and (not batch or weight < self.MAX_WEIGHT):
            item = self._pending.popleft()
            if item.future.cancelled():
                continue
            batch.append(item)
            weight += self._weight(item)
        return batch

    def _weight(self, item: W) -> float:
        return 0.0

    async def _commit_batch(self, batch: list[W]) -> None:
        raise NotImplementedError


class GroupCommit(SingleWriter[Pending]):
    """The single writer of enqueues. ``commit`` stores a batch in one transaction and returns each message's id
    (the existing message's id where an idempotency key was already taken)."""

    MAX_ITEMS = MAX_BATCH_MESSAGES
    MAX_WEIGHT = MAX_BATCH_BYTES
    TASK_NAME = "queue-group-commit"

    def __init__(self, commit: CommitBatch, counters: StoreCounters) -> None:
        super().__init__()
        self._commit = commit
        self._counters = counters

    async def submit(self, message: NewMessage, created_at: float) -> str:
        message_id: str = await self._submit(Pending(message, created_at))
        return message_id

    def _weight(self, item: Pending) -> float:
        return len(item.message.data)

    async def _commit_batch(self, batch: list[Pending]) -> None:
        unique, duplicates = _split_duplicate_keys(batch)
        try:
            ids = await self._commit(unique)
        except QueueUnavailable as exc:
            self._fail(batch, exc)
            return
        except Exception as exc:  # one bad message must not fail its batch mates: retry each alone
            if len(unique) == 1:
                self._fail(batch, exc if isinstance(exc, QueueError) else QueueError(f"enqueue failed: {type(exc).__name__}"))
                log.warning("enqueue failed", exc_info=exc)
                return
            for item in unique:
                await self._commit_batch([item, *duplicates.pop(id(item), [])])
            return
        self._counters.enqueue_commits += 1
        self._counters.enqueued += len(unique)
        for item, message_id in zip(unique, ids, strict=True):
            for waiter in (item, *duplicates.get(id(item), [])):
                _resolve(waiter.future, message_id)

    def _fail(self, batch: Sequence[Pending], exc: Exception) -> None:
        self._counters.enqueue_failures += len(batch)
        for item in batch:
            if not item.future.done():
                item.future.set_exception(exc)


def _split_duplicate_keys(batch: list[Pending]) -> tuple[list[Pending], dict[int, list[Pending]]]:
    """Keep the first message per (account, idempotency key); later ones wait on its result."""
    first: dict[tuple[str, str], Pending] = {}
    unique: list[Pending] = []
    duplicates: dict[int, list[Pending]] = {}
    for item in batch:
        key = item.message.idempotency_key
        if key is None:
            unique.append(item)
            continue
        owner = first.setdefault((item.message.account, key), item)
        if owner is item:
            unique.append(item)
        else:
            duplicates.setdefault(id(owner), []).append(item)
    return unique, duplicates


def _resolve(future: asyncio.Future[str], message_id: str) -> None:
    with contextlib.suppress(asyncio.InvalidStateError):  # the caller was cancelled meanwhile
        future.set_result(message_id)
