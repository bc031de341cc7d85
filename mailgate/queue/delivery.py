"""The delivery loop: claim due messages from the queue, send them, record each recipient's outcome.

One ``DeliveryWorker`` runs per replica (``owner`` names it in leases). It knows nothing about
SMTP: the gateway injects ``send`` (``mailgate/queue/pool_send.py`` wraps ``SMTPPool.send``),
which answers with a ``SendOutcome``: the upstream's verdict per recipient, or why there is
none. The worker turns that into per-recipient results and a next attempt:

===============================================  =========================================================
what ``send`` reports                            what happens
===============================================  =========================================================
DATA accepted                                    accepted recipients ``sent``
a recipient refused with 5xx / 4xx               that recipient ``failed`` / stays pending (backoff)
a reply to MAIL, DATA or the dot: 5xx            every pending recipient ``failed`` with that reply
... 4xx                                          every pending recipient deferred (backoff)
... ``421`` or a throttling 4xx (``retry.py``)   deferred, and the whole account paused (``defer_account``)
unreachable, timeout, authentication refused     every pending recipient deferred (backoff); when no session
                                                 could be opened, the account paused for that backoff too
                                                 (``defer_account``: its other messages wait, untried)
busy (no pooled connection free)                 deferred after ``policy.busy()``, backoff not grown
delivery unknown (drop after the final dot)      deferred if the message has ``retry_unknown``,
                                                 else its pending recipients ``failed`` ("delivery unknown")
===============================================  =========================================================

A recipient the upstream neither accepted nor refused stays pending. A deferral that would come
after the message's ``expires_at`` is scheduled at ``expires_at`` instead, where ``expire``
fails it; the worker calls ``store.expire`` every ``expire_interval`` and whenever it wakes.

Concurrency: at most ``concurrency`` sends at once, and at most ``capacity(account)`` per
account (the gateway passes the account's connection share on this replica). With ``serves``
(whether this replica may deliver an account now: configured here with a connection share, not
suspended) the worker asks the store which accounts have due messages (``due_accounts``, one
query however many accounts are configured) and claims per account, never more than the
account's free capacity, and never for an account it paused; without it, one claim across all
accounts and ``capacity`` is not consulted. A message of a paused account claimed
anyway (enqueued during the pause) is put back to the end of the pause without being sent.
A slot that finished a message claims its account's next due one itself, in the same request
as the result (``store.finish_and_claim``; no loop cycle) while some slot is free for the loop;
once every slot is taken it hands its slot back. A replica's pause is its own: it moves to the
pause's end only messages accepted during the pause, and leaves alone older ones another
replica made due again (a retry asked of that one).

Leases: each send's lease is extended every third of ``lease_seconds``, so a slow upstream
does not lose it; a worker that dies (or whose ``run`` task is cancelled) leaves its leases to
expire, and another worker claims the messages then. A result whose lease was taken over
(``LeaseLost``) is dropped: the other worker's attempt counts.

Waiting: when nothing is claimable the worker sleeps in ``store.wait_for_work`` until an
enqueue or deferral wakes it, the next message falls due (``store.next_due``), a send slot
frees, or ``wake`` says what it may take changed; never less than ``min_wait``. Messages due now
that it cannot take (their accounts' slots all taken, not served here) do not count as due: it
waits for the next one due later, not polling them every ``min_wait`` (a backlog behind a full
account would otherwise cost two queries per ``min_wait`` for as long as it drains).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple, Protocol

from mailgate.queue.errors import LeaseLost, QueueError
from mailgate.queue.model import AttemptResult, ClaimedMessage, Lease, Outcome, QueuedMessage, Reply
from mailgate.queue.retry import RetryPolicy, is_throttling
from mailgate.queue.store import QueueStore

log = logging.getLogger(__name__)

DELIVERY_UNKNOWN = "delivery unknown"
DUE_ACCOUNTS = 1000  # accounts looked at per claim round; the longest-waiting first, so none starves


class SendError(StrEnum):
    """Why a send has no per-recipient verdict; the value is the attempt's metric label."""

    BUSY = "busy"  # nothing was attempted: no free connection, pool closing, account not configured here
    UNREACHABLE = "unreachable"  # connect failed, or the session dropped before the final dot
    TIMEOUT = "timeout"
    AUTH = "auth"  # the upstream refused the credentials, or no OAuth2 token
    REPLY = "reply"  # the upstream answered the greeting, MAIL, DATA or the dot with ``reply``
    UNKNOWN = "delivery-unknown"  # the dot went out and no verdict came back: it may have been delivered


@dataclass(frozen=True)
class SendOutcome:
    """What one send did. Without ``error``: ``accepted`` and ``refused`` per recipient and
    ``reply`` is the reply to the final dot (absent when every recipient was refused). With it:
    ``reply`` is the upstream's reply when there was one, and ``detail`` a log-safe description."""

    accepted: Sequence[str] = ()
    refused: Mapping[str, Reply] = field(default_factory=dict)
    reply: Reply | None = None
    error: SendError | None = None
    detail: str = ""
    no_session: bool = False  # no session could be opened (connect, TLS, login): the account's upstream, not this message


class Send(Protocol):
    async def __call__(
        self, account: str, sender: str, recipients: Sequence[str], data: bytes, smtputf8: bool, /
    ) -> SendOutcome: ...


class DeliveryObserver(Protocol):
    """Where the worker's events are counted (a Prometheus adapter lives with the gateway's metrics)."""

    def attempt(self, account: str, outcome: str, duration: float) -> None:
        """One send finished: ``outcome`` is ``delivered``, ``refused`` (every recipient) or a ``SendError`` value."""

    def recorded(self, message: QueuedMessage) -> None:
        """An attempt was recorded: ``message`` as now stored (``deferred``, ``sent`` or ``failed``).

        Not called for a message put back untried (its account paused, or expired meanwhile)."""

    def expired(self, message_ids: Sequence[str]) -> None:
        """These messages failed for their age (``store.expire``), without an attempt."""


class _NoObserver:
    def attempt(self, account: str, outcome: str, duration: float) -> None:
        return None

    def recorded(self, message: QueuedMessage) -> None:
        return None

    def expired(self, message_ids: Sequence[str]) -> None:
        return None


# Gateway-made replies for failures without an upstream reply, kept for the status API.
_GATEWAY_REPLIES = {
    SendError.BUSY: Reply(451, "4.4.5 no upstream connection free"),
    SendError.UNREACHABLE: Reply(451, "4.4.1 upstream unreachable"),
    SendError.TIMEOUT: Reply(451, "4.4.2 upstream timed out"),
    SendError.AUTH: Reply(454, "4.7.0 upstream refused the gateway's credentials"),
}


@dataclass(frozen=True)
class _Finish:
    """An attempt's result to record (``finish_attempt``'s arguments), from the message as claimed."""

    message: QueuedMessage
    lease: Lease
    results: Sequence[AttemptResult]
    next_attempt: float
    reply: Reply | None
    expired: bool = False  # expired since the last expire run: put back for ``expire`` to fail it at once


class _Pause(NamedTuple):
    """An account paused on this replica since ``since``: the messages it moved, and those arriving during the
    pause, wait until ``until`` with ``why`` as their last reply."""

    until: float
    why: Reply
    since: float


@dataclass(frozen=True)
class Verdict:
    """What one attempt means for a message: per-recipient results, and whether to pause its account."""

    results: list[AttemptResult]
    reply: Reply | None
    throttled: Reply | None = None  # the reply that pauses the account
    busy: bool = False
    dead: Reply | None = None  # no session to the upstream: the account's other messages wait without being tried


def judge(message: QueuedMessage, outcome: SendOutcome) -> Verdict:
    """Turn a send's outcome into per-recipient results (see the table in the module docstring)."""
    pending = message.pending_recipients
    if outcome.error is None:
        results = [AttemptResult(a, Outcome.SENT, *(outcome.reply or (250, ""))) for a in outcome.accepted if a in pending]
        throttled = None
        for address, reply in outcome.refused.items():
            if address not in pending:
                continue
            results.append(AttemptResult(address, Outcome.FAILED if reply.code >= 500 else Outcome.DEFERRED, *reply))
            if is_throttling(reply):
                throttled = reply
        return Verdict(results, None, throttled)
    if outcome.error is SendError.UNKNOWN:
        text = f"{DELIVERY_UNKNOWN}: the connection failed after the message was sent; it may have been delivered"
        if outcome.detail:
            text += f" ({outcome.detail})"
        kind = Outcome.DEFERRED if message.retry_unknown else Outcome.FAILED
        return Verdict([AttemptResult(a, kind, None, text) for a in pending], None)
    reply = outcome.reply or _GATEWAY_REPLIES[outcome.error]
    if outcome.reply is None and outcome.detail:
        reply = Reply(reply.code, f"{reply.message}: {outcome.detail}")
    kind = Outcome.FAILED if reply.code >= 500 else Outcome.DEFERRED
    return Verdict(
        [AttemptResult(a, kind, *reply) for a in pending],
        reply,
        throttled=reply if kind is Outcome.DEFERRED and is_throttling(reply) else None,
        busy=outcome.error is SendError.BUSY,
        dead=reply if kind is Outcome.DEFERRED and outcome.no_session else None,
    )


class DeliveryWorker:
    def __init__(
        self,
        store: QueueStore,
        send: Send,
        *,
        owner: str,
        concurrency: int = 32,
        lease_seconds: float = 300.0,
        policy: RetryPolicy | None = None,
        clock: Callable[[], float] = time.time,
        capacity: Callable[[str], int] | None = None,
        serves: Callable[[str], bool] | None = None,
        observer: DeliveryObserver | None = None,
        expire_interval: float = 60.0,
        max_wait: float = 30.0,
        min_wait: float = 1.0,
    ) -> None:
        if concurrency < 1 or lease_seconds <= 0:
            raise ValueError("concurrency must be at least 1 and lease_seconds positive")
        self.store = store
        self.send = send
        self.owner = owner
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.policy = policy or RetryPolicy()
        self.clock = clock
        self.capacity = capacity
        self.serves = serves
        self.observer: DeliveryObserver = observer or _NoObserver()
        self.expire_interval = expire_interval
        self.max_wait = max_wait
        self.min_wait = min_wait
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight: dict[str, int] = {}
        self._paused: dict[str, _Pause] = {}  # account -> until when, and why
        self._throttles: dict[str, int] = {}  # account -> consecutive throttles
        self._dead: dict[str, int] = {}  # account -> consecutive attempts that found no session
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._next_expire = 0.0

    def stop(self) -> None:
        """Ask ``run`` to return: it claims nothing more and waits for the sends in flight."""
        self._stopping.set()

    def wake(self) -> None:
        """What this worker may take changed (an account now served, a share raised): look again now.

        Without it, messages waiting for such an account start only after the
        wait (``min_wait``) the worker took when it found nothing it could take.
        """
        self._slot_freed.set()

    async def retry_now(self, account: str) -> int:
        """``account``'s upstream was fixed (new credentials or address, an outage over): its pause here ends and
        its deferred messages are due now instead of after their backoff; returns how many. Raises QueueError."""
        self._paused.pop(account, None)
        self._throttles.pop(account, None)
        self._dead.pop(account, None)
        moved = await self.store.retry_now(account, now=self.clock())
        self.wake()
        return moved

    async def run(self) -> None:
        """Deliver until ``stop``. Cancelling this task instead abandons the sends in flight
        without recording them (as a crash would): their leases expire and another worker retries."""
        try:
            while not self._stopping.is_set():
                try:
                    await self._cycle()
                except QueueError as exc:  # storage down: keep the loop alive, try again later
                    log.warning("delivery loop: queue unavailable (%s); retrying", type(exc).__name__)
                    await self._wait(self.policy.busy())
                except Exception:  # a bug or a driver surprise: a loop that ended would leave every message undelivered
                    log.exception("delivery loop: unexpected error; retrying")
                    await self._wait(self.policy.busy())
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            for task in self._tasks:
                task.cancel()

    async def _cycle(self) -> None:
        now = self.clock()
        if now >= self._next_expire:
            await self._expire(now)
            self._next_expire = now + self.expire_interval
        self._slot_freed.clear()  # before looking: a slot freed from here on ends the wait below
        free = self.concurrency - len(self._tasks)
        if free <= 0:  # nothing to claim for until a slot frees
            await self._wait(self._timeout(None, now))
            return
        claimed, seen_all = await self._claim(free, now)
        for item in claimed:
            self._start(item)
        if len(claimed) >= free:
            return  # more may be due: claim again as soon as a slot frees (the next cycle)
        # Everything due now was taken or waits for a slot or a configuration change (both wake
        # the loop): what is left to wait for is the next message falling due later.
        due = await self.store.next_due(after=now if seen_all else None)
        await self._wait(self._timeout(due, now))

    def _timeout(self, due: float | None, now: float) -> float:
        """Until ``due``, or a pause's end (messages due during it may be waiting for it), bounded."""
        wake_at = [at for at in (due, *(pause.until for pause in self._paused.values())) if at is not None]
        timeout = min(wake_at) - now if wake_at else self.max_wait
        timeout = min(timeout, self.max_wait, max(0.0, self._next_expire - now))
        return max(timeout, self.min_wait)

    async def _claim(self, free: int, now: float) -> tuple[list[ClaimedMessage], bool]:
        """Claim up to ``free`` due messages; also whether every account with messages due now was
        looked at (then what stays due waits for a freed slot or a configuration change, not for time)."""
        for account in [key for key, pause in self._paused.items() if pause.until <= now]:
            del self._paused[account]
        if self.serves is None:
            return await self.store.claim(self.owner, limit=free, lease_seconds=self.lease_seconds, now=now), True
        claimed: list[ClaimedMessage] = []
        due_accounts = await self.store.due_accounts(now=now, limit=DUE_ACCOUNTS)
        for account in due_accounts:
            pause = self._paused.get(account)
            if pause is not None:  # enqueued during the pause: it waits for the pause's end, untried
                # Only those: older messages due now were made due by another replica (a retry asked of it)
                # and are its to send, not to be sent back to the end of this replica's pause.
                await self.store.defer_account(account, pause.until, reply=pause.why, now=now, created_since=pause.since)
                continue
            if free <= 0:
                break
            if not self._may_take(account):
                continue
            limit = min(free, self._free_capacity(account))
            if limit <= 0:
                continue
            got = await self.store.claim(self.owner, limit=limit, lease_seconds=self.lease_seconds, now=now, accounts=[account])
            claimed += got
            free -= len(got)
        return claimed, len(due_accounts) < DUE_ACCOUNTS

    def _may_take(self, account: str) -> bool:
        """Whether this worker may claim for ``account`` now: served here (per-account claims) and not paused."""
        return self.serves is not None and account not in self._paused and self.serves(account)

    def _free_capacity(self, account: str) -> int:
        if self.capacity is None:
            return self.concurrency
        return self.capacity(account) - self._in_flight.get(account, 0)

    async def _wait(self, timeout: float) -> None:
        """Until work may be due, a send slot frees (since the cycle began), ``stop``, or ``timeout``."""
        waits = [
            asyncio.ensure_future(self.store.wait_for_work(timeout)),
            asyncio.ensure_future(self._slot_freed.wait()),
            asyncio.ensure_future(self._stopping.wait()),
        ]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    def _start(self, claimed: ClaimedMessage) -> None:
        account = claimed.message.account
        self._in_flight[account] = self._in_flight.get(account, 0) + 1
        task = asyncio.create_task(self._deliver_while_due(claimed), name=f"deliver-{account}")
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._done(done, account))

    def _done(self, task: asyncio.Task[None], account: str) -> None:
        self._tasks.discard(task)
        self._in_flight[account] -= 1
        if not self._in_flight[account]:
            del self._in_flight[account]
        self._slot_freed.set()
        error = None if task.cancelled() else task.exception()
        if error is not None:
            self._report_failure(error)

    @staticmethod
    def _report_failure(error: BaseException) -> None:
        if isinstance(error, QueueError):  # the lease expires and the message is retried (docs: a possible duplicate)
            log.warning("delivery loop: could not record an attempt (%s); the message will be retried", type(error).__name__)
        else:
            log.error("delivery of a message failed unexpectedly", exc_info=error)

    async def _deliver_while_due(self, claimed: ClaimedMessage) -> None:
        """Deliver ``claimed``, then, while its account has due messages, the next one, in the same slot.

        A backlog then costs one claim per message, not a whole loop cycle (which accounts are due,
        claim, when is the next due: three round trips to PostgreSQL, one after the other for
        every slot). The slot is handed back to the loop instead when every slot is taken: the loop
        gives it to the longest-waiting account, so a busy account cannot starve the others.
        The next claim goes out together with the last attempt's result (they do not depend on each
        other, ``store.finish_and_claim``): one wait between two sends; on PostgreSQL one statement,
        on SQLite one shared transaction.
        """
        account = claimed.message.account
        current: ClaimedMessage | None = claimed
        while current is not None:
            step = await self._attempt(current)
            failure, current = await self._finish(step, claim_next=self._may_claim_next(account))
            if failure is None and step.expired:
                try:
                    await self._expire(self.clock())
                except QueueError as exc:
                    failure = exc
            if failure is not None:
                if current is None:
                    raise failure
                self._report_failure(failure)  # as the task's end would report it; the slot goes on with `current`

    def _may_claim_next(self, account: str) -> bool:
        """Whether a slot that finished a message of ``account`` claims the account's next one itself: not
        when stopping or when every slot is taken (the loop hands it out then), nor when the account is
        paused, no longer served here, or its share shrank below what is in flight."""
        if self._stopping.is_set() or len(self._tasks) >= self.concurrency:
            return False
        return self._may_take(account) and self._free_capacity(account) >= 0

    async def _attempt(self, claimed: ClaimedMessage) -> _Finish:
        """Send ``claimed`` (or decide not to); returns the result to record. A pause it starts moves the
        account's other messages before the result is recorded."""
        message = claimed.message
        lease = claimed.lease
        now = self.clock()
        pause = self._paused.get(message.account)
        paused = pause.until if pause is not None else None
        if now >= message.expires_at:  # expired since the last expire run: put it back for expire to fail
            return _Finish(message, lease, [], message.expires_at, message.last_reply, expired=True)
        if paused is not None and paused > now:  # enqueued while its account is paused: back to the pause's end
            return _Finish(message, lease, [], min(paused, message.expires_at), message.last_reply)
        keeper = asyncio.create_task(self._keep_lease(lease))
        try:
            outcome = await self._send(message, claimed.data)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                lease = await keeper
        verdict = judge(message, outcome)
        now = self.clock()
        next_attempt = self._schedule(message, verdict, now)
        if verdict.throttled is not None:
            until = self._pause(message.account, now, verdict.throttled, self._throttles, self.policy.throttle)
            await self._defer_paused(message.account, verdict, verdict.throttled, until, now)
            return _Finish(message, lease, verdict.results, min(until, message.expires_at), verdict.reply)
        if verdict.dead is not None:
            until = self._pause(message.account, now, verdict.dead, self._dead, self.policy.backoff)
            await self._defer_paused(message.account, verdict, verdict.dead, until, now)
            return _Finish(message, lease, verdict.results, min(until, message.expires_at), verdict.reply)
        if any(r.outcome is Outcome.SENT for r in verdict.results):
            self._throttles.pop(message.account, None)
            self._dead.pop(message.account, None)
        return _Finish(message, lease, verdict.results, min(next_attempt, message.expires_at), verdict.reply)

    async def _expire(self, now: float) -> None:
        expired = await self.store.expire(now=now)
        if expired:
            log.info("delivery loop: %d messages expired", len(expired))
            self.observer.expired(expired)

    async def _defer_paused(self, account: str, verdict: Verdict, why: Reply, until: float, now: float) -> None:
        """The account's other pending messages wait for the pause's end, untried (raises QueueError)."""
        moved = await self.store.defer_account(account, until, reply=why, now=now)
        cause = "throttled upstream" if verdict.throttled is not None else "upstream unreachable"
        log.info("account %s %s; paused %.0f s (%d messages moved)", account, cause, until - now, moved)

    async def _send(self, message: QueuedMessage, data: bytes | None) -> SendOutcome:
        started = time.monotonic()
        try:
            if data is None:
                data = await self.store.data(message.id)
            outcome = await self.send(message.account, message.sender, message.pending_recipients, data, message.smtputf8)
        except QueueError:
            raise
        except Exception as exc:  # a bug in send must not lose the message nor spin: treat as unreachable
            log.exception("send raised instead of returning an outcome")
            outcome = SendOutcome(error=SendError.UNREACHABLE, detail=type(exc).__name__)
        label = outcome.error.value if outcome.error else ("delivered" if outcome.reply else "refused")
        self.observer.attempt(message.account, label, time.monotonic() - started)
        return outcome

    def _schedule(self, message: QueuedMessage, verdict: Verdict, now: float) -> float:
        """The next attempt for whatever stays pending: only expiry ends retries."""
        if verdict.busy:
            return now + self.policy.busy()
        return now + self.policy.backoff(message.attempts)

    def _pause(self, account: str, now: float, why: Reply, counts: dict[str, int], delay: Callable[[int], float]) -> float:
        """Pause ``account`` for ``delay`` of its consecutive pauses of this kind (``counts``); returns the end."""
        count = counts.get(account, 0) + 1
        counts[account] = count
        current = self._paused.get(account)
        until = max(current.until if current is not None else now, now + delay(count))
        since = current.since if current is not None and current.until > now else now  # an ended one not yet cleared: anew
        self._paused[account] = _Pause(until, why, since)
        return until

    async def _keep_lease(self, lease: Lease) -> Lease:
        """Extend the lease every third of its length until cancelled; returns the latest lease."""
        try:
            while True:
                await asyncio.sleep(self.lease_seconds / 3)
                lease = await self.store.extend_lease(lease, lease_seconds=self.lease_seconds, now=self.clock())
        except asyncio.CancelledError:
            return lease
        except LeaseLost:
            log.warning("lease of message %s lost during its delivery", lease.message_id)
            return lease
        except QueueError as exc:
            log.warning("could not extend the lease of message %s (%s)", lease.message_id, type(exc).__name__)
            return lease

    async def _finish(self, step: _Finish, *, claim_next: bool) -> tuple[Exception | None, ClaimedMessage | None]:
        """Record ``step`` and, with ``claim_next``, claim its account's next due message at the same time; returns
        why recording failed (None: recorded, or its lease was lost, which drops the result) and the claim."""
        message = step.message
        done = await self.store.finish_and_claim(
            step.lease,
            step.results,
            next_attempt_at=step.next_attempt,
            reply=step.reply,
            now=self.clock(),
            current=message,
            claim_from=message.account if claim_next else None,
            lease_seconds=self.lease_seconds,
        )
        if isinstance(done.finished, LeaseLost):
            log.warning("message %s was taken over or changed during its delivery; result dropped", message.id)
        elif isinstance(done.finished, Exception):
            return done.finished, done.claimed
        elif step.results:
            self.observer.recorded(done.finished)
        return None, done.claimed
