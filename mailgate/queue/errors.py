"""Exceptions a store raises; the doors and the delivery loop map them to replies and retries."""

from __future__ import annotations


class QueueError(Exception):
    """Base of the queue's own errors."""


class QueueUnavailable(QueueError):
    """The storage could not be reached, or a write's outcome is unknown (connection lost around COMMIT).

    For ``enqueue`` this means "not acknowledged": the door answers 503 / 451 and the client
    retries. The message may still have been committed when the connection died during COMMIT;
    an ``idempotency_key`` turns that retry into a no-op.
    """


class LeaseLost(QueueError):
    """The caller's lease no longer holds: it expired and another worker claimed the message,
    the message was cancelled, expired or its account deferred. The holder must drop its result."""


class SchemaTooNew(QueueError):
    """The database was migrated by a newer gateway; this one refuses to write to it."""
