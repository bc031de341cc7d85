"""The queue's one interface. ``SQLiteStore`` and ``PostgresStore`` implement it and pass one test suite.

How the gateway uses it:

* **doors** (HTTP 202, SMTP 250): ``enqueue`` returns only once the message is committed
  durably; concurrent enqueues share one commit (group commit, ``batching.py``). Then
  ``get`` / ``list_messages`` / ``cancel`` serve the status API.
* **delivery loop**, one per replica::

      while running:
          store.expire()
          for claimed in await store.claim(owner, limit=n, lease_seconds=300):
              body = await store.data(claimed.message.id)
              results = ...deliver to claimed.message.pending_recipients...
              await store.finish_attempt(claimed.lease, results, next_attempt_at=backoff(...))
          due = await store.next_due()
          await store.wait_for_work(timeout=min(cap, due - now if due else cap))

  ``claim`` leases due messages to ``owner`` (several replicas never get the same message; a
  replica that dies has its leases expire and the messages reclaimed by another). A throttled
  account (``421``) is pushed back as a whole with ``defer_account``. ``finish_attempt``
  records each recipient's outcome and only succeeds for the current lease holder.
* **metrics / operator**: ``stats``; housekeeping: ``purge`` of finished messages.

Every time-dependent method takes ``now`` (epoch seconds, default ``time.time()``) so the
caller's clock decides and tests need no sleeping. All methods raise ``QueueUnavailable``
when the storage cannot be reached.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from types import TracebackType
from typing import Protocol, Self

from mailgate.queue.errors import QueueError
from mailgate.queue.model import (
    AccountStats,
    AttemptResult,
    ClaimedMessage,
    FinishedAndClaimed,
    Lease,
    MessageState,
    NewMessage,
    Page,
    QueuedMessage,
    Reply,
    StoreCounters,
)

EXPIRED_REASON = "expired: undelivered after the account's maximum age"
CANCELLED_REASON = "cancelled"


class QueueStore(Protocol):
    counters: StoreCounters

    async def open(self) -> None:
        """Connect, create or migrate the schema, start the group-commit writer; a no-op when open."""

    async def close(self) -> None:
        """Commit enqueues already waiting, then disconnect."""

    async def enqueue(self, message: NewMessage, *, now: float | None = None) -> str:
        """Store ``message`` as ``queued``, due at once; returns its id after a durable commit.

        With an ``idempotency_key`` already used by a kept message of the same account, stores
        nothing and returns that message's id."""

    async def get(self, message_id: str) -> QueuedMessage | None:
        """The message and its recipients, or None."""

    async def data(self, message_id: str) -> bytes:
        """The message body as enqueued; KeyError if there is no such message."""

    async def list_messages(
        self, account: str, *, state: MessageState | None = None, limit: int = 100, after_id: str | None = None
    ) -> Page:
        """One page of an account's messages in id (= creation) order, optionally of one state."""

    async def claim(
        self,
        owner: str,
        *,
        limit: int,
        lease_seconds: float,
        now: float | None = None,
        accounts: Collection[str] | None = None,
    ) -> list[ClaimedMessage]:
        """Lease up to ``limit`` due messages to ``owner``, earliest due first.

        Due: queued or deferred with ``next_attempt_at <= now``, or sending with an expired
        lease. Each claim counts as an attempt. ``accounts`` restricts the claim (e.g. to the
        accounts with free connection capacity on this replica)."""

    async def extend_lease(self, lease: Lease, *, lease_seconds: float, now: float | None = None) -> Lease:
        """Keep a long delivery's lease alive; LeaseLost if it no longer holds."""

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
        """Record an attempt and release the lease; returns the message as now stored.

        ``current`` is the message as claimed under ``lease``: nobody else changes a leased
        message's recipients, so a store may plan from it instead of reading it again.

        Recipients still pending (deferred or not attempted) wait for ``next_attempt_at``, or
        fail when it is None. ``reply`` is the message-level reply (e.g. a ``421`` greeting);
        without it the results' replies are used. LeaseLost if the lease was taken over,
        or the message cancelled, expired or moved by ``defer_account`` meanwhile; a lease that
        expired but was not taken over still finishes."""

    async def finish_and_claim(
        self,
        lease: Lease,
        results: Sequence[AttemptResult],
        *,
        next_attempt_at: float | None,
        reply: Reply | None = None,
        now: float | None = None,
        current: QueuedMessage | None = None,
        claim_from: str | None = None,
        lease_seconds: float = 300.0,
    ) -> FinishedAndClaimed:
        """``finish_attempt``, and at the same time (with ``claim_from``) claim that account's next due message for
        the lease's owner: a delivery slot's step between two sends. They do not depend on each other, so a
        store may do both in one round trip; this one asks for both at once. A failure to record is returned,
        not raised, so that a message claimed meanwhile is not lost to its lease; a failed claim claims nothing."""

        async def claim_next() -> ClaimedMessage | None:
            if claim_from is None:
                return None
            try:
                claimed = await self.claim(lease.owner, limit=1, lease_seconds=lease_seconds, now=now, accounts=[claim_from])
            except QueueError:  # the delivery loop claims again once the store is back
                return None
            return claimed[0] if claimed else None

        finishing = self.finish_attempt(lease, results, next_attempt_at=next_attempt_at, reply=reply, now=now, current=current)
        finished, claimed = await asyncio.gather(finishing, claim_next(), return_exceptions=True)
        if isinstance(claimed, BaseException):
            raise claimed
        if isinstance(finished, BaseException) and not isinstance(finished, QueueError):
            raise finished
        return FinishedAndClaimed(finished, claimed)

    async def release_leases(self, owner: str, *, now: float | None = None) -> int:
        """End every lease held by ``owner`` now, so its messages are due at once; returns how many.

        For a replica starting again under the same name (a restarted container in the same pod):
        the leases of its previous life belong to a dead process, and waiting for them to expire
        would hold those messages back for a whole lease. Their deliveries may have reached the
        upstream (delivery unknown): like an expired lease, a possible second copy."""

    async def defer_account(
        self,
        account: str,
        until: float,
        *,
        reply: Reply | None = None,
        now: float | None = None,
        created_since: float | None = None,
    ) -> int:
        """Move every pending, unleased message of ``account`` due before ``until`` to ``until``
        (state ``deferred``); returns how many moved. For ``421`` / throttling replies. With
        ``created_since``, only the messages created since then: what arrived during a pause, not
        what another replica made due again (a retry) while this one stayed paused."""

    async def retry_now(self, account: str, *, now: float | None = None) -> int:
        """Make every deferred message of ``account`` due now; returns how many. For an upstream that was fixed
        (its credentials or address changed, an outage ended): its messages need not wait out their backoff."""

    async def cancel(self, message_id: str, *, now: float | None = None) -> bool:
        """Cancel a queued or deferred message that no worker holds; False if it cannot be (any more)."""

    async def expire(self, *, now: float | None = None) -> list[str]:
        """Fail the unleased pending messages older than their maximum age; returns their ids."""

    async def purge(self, *, finished_before: float, limit: int = 1000) -> int:
        """Delete up to ``limit`` finished messages (and their bodies) finished before the given time."""

    async def stats(self) -> dict[str, AccountStats]:
        """Pending messages per account (accounts with none are absent)."""

    async def due_accounts(self, *, now: float | None = None, limit: int = 1000) -> list[str]:
        """Accounts with messages due now, the longest-waiting first: what a worker claims per account
        without asking the store once per configured account (10,000 of them)."""

    async def next_due(self, *, after: float | None = None) -> float | None:
        """The earliest ``next_attempt_at`` among pending messages (lease expiry for sending ones);
        with ``after``, the earliest one later than it: when a worker has seen every message due now and
        could take none of the rest (their accounts' slots all taken, or not served here), what it waits for
        besides a freed slot or a configuration change, instead of polling messages it cannot take."""

    async def wait_for_work(self, timeout: float) -> bool:
        """Sleep until new work may be due (an enqueue or a deferral, in any process sharing the
        store where the backend can tell) or ``timeout``; True if woken by work."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()
