"""A gateway's durable outbox: the queue store, the worker that delivers from it, and what the doors need.

Doors hand a message to ``enqueue`` once every check that can fail at once has
passed (access, size, senders); ``enqueue`` returns after the store committed
it durably, and only then does a door answer (HTTP 202, SMTP 250). The worker
(``queue/delivery.py``) delivers through the same pool and connection share as
synchronous sends: it delivers only accounts this gateway holds a share of,
at most that many at once per account, and each attempt takes a token from the
account's rate limiter, so cluster-wide limits hold whichever replica delivers.
A suspended account, or one this gateway holds no share of, keeps its messages
queued until a replica that serves it claims them (with PostgreSQL, any replica).

Finished messages are kept ``keep_finished`` seconds for the status API, then
purged. Events (``sent``, ``deferred``, ``failed``) go to an optional
``EventSink`` (the webhook notifier), which must not block.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..pool import SMTPPool
from ..queue import AccountStats, MessageState, NewMessage, Page, QueuedMessage, QueueError, QueueStore, store_for_url
from ..queue.delivery import DeliveryObserver, DeliveryWorker, SendError, SendOutcome
from ..queue.pool_send import pool_send
from ..queue.retry import RetryPolicy
from .accounts import Account, AccountRegistry
from .envelope import OutgoingMessage

log = logging.getLogger("mailgate.relay.outbox")

FINAL = (MessageState.SENT, MessageState.FAILED)


@dataclass(frozen=True)
class OutboxOptions:
    """The ``--queue*`` flags."""

    url: str  # sqlite:///path.db or postgresql://... (queue/__init__.py)
    owner: str  # this replica's name in leases: unique among live replicas, the same after a restart (the pod name)
    concurrency: int = 64  # deliveries in flight at once, all accounts together
    lease_seconds: float = 300.0
    keep_finished: float = 7 * 86400.0  # sent, failed and cancelled messages stay visible this long
    housekeeping_interval: float = 15.0  # queue depth gauges refresh, purge
    policy: RetryPolicy | None = None

    def __repr__(self) -> str:  # a PostgreSQL URL may carry a password
        return f"OutboxOptions(owner={self.owner!r}, concurrency={self.concurrency})"


class OutboxObserver(DeliveryObserver, Protocol):
    """Where the outbox's events are counted (``queue_metrics.QueueMetrics``)."""

    def enqueued(self, account: str) -> None: ...


class EventSink(Protocol):
    """Receives a message's state after each recorded attempt (``webhook_events.WebhookEvents``); never blocks."""

    def message_event(self, message: QueuedMessage) -> None: ...

    def refresh(self) -> None:
        """Called every housekeeping tick: catch up with configuration changes (webhook targets)."""


class Outbox:
    def __init__(
        self,
        options: OutboxOptions,
        registry: AccountRegistry,
        pool: SMTPPool,
        *,
        observer: OutboxObserver | None = None,
        events: EventSink | None = None,
    ) -> None:
        self.options = options
        self.registry = registry
        self.store: QueueStore = store_for_url(options.url)
        self.observer = observer
        self.events = events
        self.stats: dict[str, AccountStats] = {}  # refreshed by housekeeping; read by metrics and the admin status
        self._deliver = pool_send(pool)
        self.worker = DeliveryWorker(
            self.store,
            self._send,
            owner=options.owner,
            concurrency=options.concurrency,
            lease_seconds=options.lease_seconds,
            policy=options.policy,
            capacity=self._capacity,
            serves=self._serves,
            observer=self,
        )
        registry.listeners.append(self.worker.wake)  # messages waiting for an account now served go at once
        registry.upstream_changed.append(self._upstream_changed)
        self._tasks: list[asyncio.Task[None]] = []
        self._reports: set[asyncio.Task[None]] = set()

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Open (and create or migrate) the store, then start delivering; raises QueueError if it cannot be opened."""
        await self.store.open()
        released = await self.store.release_leases(self.options.owner)
        if released:
            log.warning("%d deliveries of this gateway's previous run were cut off; retrying them now", released)
        self._tasks = [
            asyncio.create_task(self.worker.run(), name="outbox-delivery"),
            asyncio.create_task(self._housekeeping(), name="outbox-housekeeping"),
        ]

    async def drain(self, deadline: float) -> bool:
        """Claim nothing more; wait for deliveries in flight until ``deadline`` (loop time). True when none is left."""
        self.worker.stop()
        if not self._tasks:
            return True
        done, _ = await asyncio.wait(self._tasks[:1], timeout=max(deadline - asyncio.get_running_loop().time(), 0.0))
        return bool(done)

    async def stop(self, deadline: float) -> None:
        """``drain``, then close the store.

        A delivery cut off at the deadline keeps its lease until it expires; the next
        start (or another replica) delivers it again: possibly a second copy, never a loss.
        """
        if not await self.drain(deadline):
            log.warning("deliveries still in flight at the end of the shutdown; they will be retried after their lease")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._reports, return_exceptions=True)
        self._tasks = []
        await self.store.close()

    # -- the doors ----------------------------------------------------------------------------

    async def enqueue(self, account: Account, message: OutgoingMessage, *, idempotency_key: str | None = None) -> str:
        """Store the message durably; its id once committed. Raises QueueError when the store cannot take it.

        With an ``idempotency_key`` already used for a kept message of the account, nothing is
        stored and that message's id comes back (a client retrying after a lost 202).
        """
        delivery = account.config.spec.delivery
        new = NewMessage(
            account=account.key,
            sender=message.sender,
            recipients=message.recipients,
            data=message.data,
            message_id=message.message_id,
            smtputf8=message.smtputf8,
            idempotency_key=idempotency_key,
            max_age_seconds=delivery.max_age_seconds,
            retry_unknown=delivery.retry_unknown,
        )
        message_id = await self.store.enqueue(new)
        if self.observer is not None:
            self.observer.enqueued(account.key)
        return message_id

    async def get(self, message_id: str) -> QueuedMessage | None:
        return await self.store.get(message_id)

    async def list_messages(self, account: str, *, state: MessageState | None, limit: int, after_id: str | None) -> Page:
        return await self.store.list_messages(account, state=state, limit=limit, after_id=after_id)

    async def cancel(self, message_id: str) -> bool:
        return await self.store.cancel(message_id)

    async def retry_now(self, account: str) -> int:
        """The account's deferred messages are due now (and its pause here ends); how many. Raises QueueError."""
        retried = await self.worker.retry_now(account)
        if retried:
            log.info("account %s: %d deferred messages are due now", account, retried)
        return retried

    def _upstream_changed(self, account: str) -> None:
        """New credentials or a new address: what failed with the old ones is worth trying again now."""
        if not self._tasks:
            return  # not delivering (yet, or any more): the loop will find the messages due anyway
        task = asyncio.create_task(self._retry_after_change(account), name=f"outbox-retry-{account}")
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    async def _retry_after_change(self, account: str) -> None:
        try:
            await self.retry_now(account)
        except QueueError as exc:  # the messages keep their schedule
            error = type(exc).__name__
            log.warning("account %s: could not retry its deferred messages after its upstream changed (%s)", account, error)

    # -- delivery -----------------------------------------------------------------------------

    def _serves(self, key: str) -> bool:
        """Deliver an account's messages here only while this gateway holds a share of it and it is not suspended."""
        account = self.registry.get(key)
        return account is not None and account.settings is not None and not account.config.spec.suspend

    def _capacity(self, key: str) -> int:
        account = self.registry.get(key)
        if account is None or account.settings is None:
            return 0
        limits = account.settings.limits
        return limits.max_connections if limits is not None else 1

    async def _send(self, account_key: str, sender: str, recipients: Sequence[str], data: bytes, smtputf8: bool) -> SendOutcome:
        """The pool send, within the account's rate limit: a send over the limit is not attempted (busy, retried soon)."""
        account = self.registry.get(account_key)
        if account is None or account.settings is None:
            return SendOutcome(error=SendError.BUSY, detail="the account is not served by this gateway")
        if account.limiter.take() > 0:
            return SendOutcome(error=SendError.BUSY, detail="the account is over its rate limit")
        outcome = await self._deliver(account_key, sender, recipients, data, smtputf8)
        if outcome.error is SendError.BUSY:
            account.limiter.give_back()
        return outcome

    # DeliveryObserver, forwarded to metrics and events
    def attempt(self, account: str, outcome: str, duration: float) -> None:
        if self.observer is not None:
            self.observer.attempt(account, outcome, duration)

    def recorded(self, message: QueuedMessage) -> None:
        if self.observer is not None:
            self.observer.recorded(message)
        if self.events is not None:
            self.events.message_event(message)

    def expired(self, message_ids: Sequence[str]) -> None:
        """Messages failed for their age are final too: tell metrics and events (loaded in the background)."""
        task = asyncio.get_running_loop().create_task(self._report_expired(message_ids), name="outbox-expired")
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    async def _report_expired(self, message_ids: Sequence[str]) -> None:
        for message_id in message_ids:
            try:
                message = await self.store.get(message_id)
            except QueueError:
                return
            if message is not None:
                self.recorded(message)

    # -- housekeeping -------------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        """Refresh the depth gauges, purge what finished long ago; a storage outage is logged, not fatal."""
        while True:
            if self.events is not None:
                self.events.refresh()
            try:
                self.stats = await self.store.stats()
                purged = await self.store.purge(finished_before=time.time() - self.options.keep_finished)
                if purged:
                    log.info("purged %d finished messages", purged)
            except QueueError as exc:
                log.warning("queue housekeeping failed (%s); retrying", type(exc).__name__)
            await asyncio.sleep(self.options.housekeeping_interval)
