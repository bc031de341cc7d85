"""How one delivery attempt changes a message: pure functions both backends share.

Keeping the state rules out of SQL makes them the same for SQLite and PostgreSQL and
testable without a database. The rules:

* a recipient ``sent`` or ``failed`` is final; ``deferred`` leaves it pending;
* recipients still pending after the attempt (deferred, or not attempted at all) wait for
  ``next_attempt_at``; with ``next_attempt_at=None`` they fail with the attempt's reply;
* with nothing pending the message is ``sent`` when every recipient was accepted and
  ``failed`` otherwise (the recipients tell which ones failed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from mailgate.queue.model import (
    AttemptResult,
    MessageState,
    Outcome,
    QueuedMessage,
    RecipientState,
    RecipientStatus,
    Reply,
)

NOT_RETRIED = "not retried"


@dataclass(frozen=True)
class AttemptPlan:
    recipients: tuple[RecipientState, ...]
    changed: tuple[int, ...]  # indexes of recipients to write back
    state: MessageState
    last_reply: Reply | None


def plan_attempt(
    recipients: Sequence[RecipientState],
    results: Sequence[AttemptResult],
    next_attempt_at: float | None,
    reply: Reply | None,
) -> AttemptPlan:
    """Apply ``results`` to ``recipients``; raises ValueError for a result naming no pending recipient."""
    index = {r.address: i for i, r in enumerate(recipients)}
    updated = list(recipients)
    changed: set[int] = set()
    for result in results:
        i = index.get(result.address)
        if i is None or updated[i].state is not RecipientStatus.PENDING:
            raise ValueError("an attempt result names a recipient that is not pending in this message")
        current = updated[i]
        state = {
            Outcome.SENT: RecipientStatus.SENT,
            Outcome.FAILED: RecipientStatus.FAILED,
            Outcome.DEFERRED: RecipientStatus.PENDING,
        }[result.outcome]
        updated[i] = replace(current, state=state, code=result.code, message=result.message, attempts=current.attempts + 1)
        changed.add(i)
    last_reply = reply if reply is not None else _reply_of(results)
    if next_attempt_at is None:
        for i, r in enumerate(updated):
            if r.state is not RecipientStatus.PENDING:
                continue
            if i not in changed:  # not attempted this time: the attempt's reply explains why it stops
                code, text = last_reply if last_reply else (None, NOT_RETRIED)
                r = replace(r, code=code, message=text)
            updated[i] = replace(r, state=RecipientStatus.FAILED)
            changed.add(i)
    return AttemptPlan(tuple(updated), tuple(sorted(changed)), final_state(updated), last_reply)


def after_attempt(
    current: QueuedMessage, plan: AttemptPlan, next_attempt_at: float | None, lease_until: float, at: float
) -> QueuedMessage:
    """``current`` as a store writes it for ``plan``: exactly what a later read returns, so a store that planned
    from the message as claimed need not read it again. A message that stays pending waits for
    ``next_attempt_at``; a finished one keeps its lease's end there."""
    deferred = plan.state is MessageState.DEFERRED
    return replace(
        current,
        state=plan.state,
        recipients=plan.recipients,
        last_reply=plan.last_reply or current.last_reply,
        lease_owner=None,
        next_attempt_at=next_attempt_at if deferred and next_attempt_at is not None else lease_until,
        finished_at=None if deferred else at,
    )


def final_state(recipients: Sequence[RecipientState]) -> MessageState:
    """DEFERRED while anyone is pending, else SENT if all were accepted, else FAILED."""
    if any(r.state is RecipientStatus.PENDING for r in recipients):
        return MessageState.DEFERRED
    if all(r.state is RecipientStatus.SENT for r in recipients):
        return MessageState.SENT
    return MessageState.FAILED


def _reply_of(results: Sequence[AttemptResult]) -> Reply | None:
    """The reply that best explains the attempt: a deferral's first, then a failure's, then a success's."""
    for outcome in (Outcome.DEFERRED, Outcome.FAILED, Outcome.SENT):
        for result in results:
            if result.outcome is outcome and result.code is not None:
                return Reply(result.code, result.message)
    return None
