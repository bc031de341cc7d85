"""The queue's data: what a door hands in, what the store hands back, what a delivery attempt reports.

Plain frozen dataclasses with no storage behaviour, so the doors, the delivery loop and both
backends share one vocabulary. Times are epoch seconds (UTC, ``time.time()``): every store
method takes ``now`` so that tests and replicas decide the clock, not the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

DEFAULT_MAX_AGE_SECONDS = 5 * 24 * 3600.0  # Postfix's maximal_queue_lifetime


class MessageState(StrEnum):
    """Where a message stands. ``sending`` means leased to a delivery worker."""

    QUEUED = "queued"  # accepted, never attempted
    DEFERRED = "deferred"  # attempted (or its account throttled); waits for next_attempt_at
    SENDING = "sending"  # leased: a worker is delivering it until the lease expires
    SENT = "sent"  # every recipient accepted upstream
    FAILED = "failed"  # finished with at least one recipient refused, expired or abandoned
    CANCELLED = "cancelled"  # cancelled before delivery


class RecipientStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


class Outcome(StrEnum):
    """What one attempt did for one recipient."""

    SENT = "sent"  # upstream accepted it (2xx after DATA)
    DEFERRED = "deferred"  # try again later (4xx, timeout, connection lost before DATA ended)
    FAILED = "failed"  # never again (5xx, or an unknown outcome the account does not retry)


class Reply(NamedTuple):
    """An upstream reply (or a gateway-made one such as a timeout), kept for the status API."""

    code: int
    message: str


@dataclass(frozen=True)
class NewMessage:
    """A message a door accepted and wants stored before it answers 202 / 250.

    ``data`` is the exact DATA payload (CRLF line ends, no dot-stuffing) and is stored once
    however many recipients there are. Exact duplicate recipients are dropped (sent once, as
    Postfix does). ``idempotency_key`` makes a repeated enqueue of the same account return the
    first message's id while that message is kept (see ``QueueStore.purge``).
    """

    account: str  # "namespace/name"
    sender: str
    recipients: Sequence[str]
    data: bytes
    message_id: str = ""
    smtputf8: bool = False
    idempotency_key: str | None = None
    max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS
    retry_unknown: bool = False

    def __post_init__(self) -> None:
        unique = tuple(dict.fromkeys(self.recipients))
        if not unique:
            raise ValueError("a message needs at least one recipient")
        if self.max_age_seconds <= 0:
            raise ValueError("max_age_seconds must be positive")
        object.__setattr__(self, "recipients", unique)

    def __repr__(self) -> str:  # the body is user data and can be megabytes: never in a repr or log line
        return f"NewMessage(account={self.account!r}, recipients={len(self.recipients)}, size={len(self.data)})"


@dataclass(frozen=True)
class RecipientState:
    address: str
    state: RecipientStatus
    code: int | None = None  # the last reply for this recipient
    message: str = ""
    attempts: int = 0


@dataclass(frozen=True)
class QueuedMessage:
    """A stored message without its body (``QueueStore.data`` loads that).

    For a ``sending`` message ``next_attempt_at`` is its lease expiry: the moment another
    worker may claim it if the holder neither finishes nor extends the lease.
    """

    id: str
    account: str
    sender: str
    message_id: str
    smtputf8: bool
    idempotency_key: str | None
    retry_unknown: bool
    size: int
    state: MessageState
    created_at: float
    next_attempt_at: float
    expires_at: float  # created_at + max_age_seconds
    attempts: int  # claims so far, counting one whose worker died
    last_reply: Reply | None
    lease_owner: str | None
    finished_at: float | None
    recipients: tuple[RecipientState, ...] = field(default=())

    @property
    def pending_recipients(self) -> list[str]:
        return [r.address for r in self.recipients if r.state is RecipientStatus.PENDING]


@dataclass(frozen=True)
class Lease:
    """Proof of a claim. ``attempt`` is the fencing token: a stale holder whose lease was
    taken over (even by an owner with the same name) no longer matches it."""

    message_id: str
    owner: str
    attempt: int
    expires_at: float


@dataclass(frozen=True)
class ClaimedMessage:
    message: QueuedMessage
    lease: Lease
    # The body, when the store read it with the claim (one query for a whole batch instead of one per message);
    # None: ``QueueStore.data`` reads it.
    data: bytes | None = None


@dataclass(frozen=True)
class FinishedAndClaimed:
    """What ``QueueStore.finish_and_claim`` did: the message as now stored, or why recording failed
    (``LeaseLost``, ``QueueUnavailable``), and the next message claimed, if any."""

    finished: QueuedMessage | Exception
    claimed: ClaimedMessage | None


@dataclass(frozen=True)
class AttemptResult:
    """One recipient's outcome in one attempt, as ``finish_attempt`` records it."""

    address: str
    outcome: Outcome
    code: int | None = None
    message: str = ""


@dataclass(frozen=True)
class Page:
    items: list[QueuedMessage]
    next_after: str | None  # pass as ``after_id`` for the next page; None on the last page


@dataclass(frozen=True)
class AccountStats:
    """Pending messages of one account, for the depth/age gauges and the SmtpAccount status."""

    queued: int
    deferred: int
    sending: int
    oldest_created_at: float

    @property
    def depth(self) -> int:
        return self.queued + self.deferred + self.sending

    def oldest_age_seconds(self, now: float) -> float:
        return max(0.0, now - self.oldest_created_at)


@dataclass
class StoreCounters:
    """Write-path counters a store keeps in memory (exported as metrics by the caller).

    ``enqueue_commits`` counts transactions that committed enqueued messages: fewer than
    ``enqueued`` when group commit batched concurrent enqueues into one fsync.
    """

    enqueued: int = 0
    enqueue_commits: int = 0
    enqueue_failures: int = 0
