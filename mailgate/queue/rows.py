"""Row <-> dataclass mapping shared by both backends: they select the same columns in the same order."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from mailgate.queue.model import AccountStats, MessageState, QueuedMessage, RecipientState, RecipientStatus, Reply

MESSAGE_COLUMNS = (
    "id, account, sender, message_id, smtputf8, idempotency_key, retry_unknown, size, state, created_at,"
    " next_attempt_at, expires_at, attempts, last_code, last_message, lease_owner, finished_at"
)
RECIPIENT_COLUMNS = "message_id, address, state, code, message, attempts"


def message_from_row(row: Sequence[Any], recipients: Iterable[RecipientState] = ()) -> QueuedMessage:
    (id_, account, sender, message_id, smtputf8, key, retry_unknown, size, state, created_at,
     next_attempt_at, expires_at, attempts, last_code, last_message, lease_owner, finished_at) = row  # fmt: skip
    return QueuedMessage(
        id=id_,
        account=account,
        sender=sender,
        message_id=message_id,
        smtputf8=bool(smtputf8),
        idempotency_key=key,
        retry_unknown=bool(retry_unknown),
        size=size,
        state=MessageState(state),
        created_at=created_at,
        next_attempt_at=next_attempt_at,
        expires_at=expires_at,
        attempts=attempts,
        last_reply=None if last_code is None else Reply(last_code, last_message or ""),
        lease_owner=lease_owner,
        finished_at=finished_at,
        recipients=tuple(recipients),
    )


def recipients_by_message(rows: Iterable[Sequence[Any]]) -> dict[str, list[RecipientState]]:
    """Rows of RECIPIENT_COLUMNS, in position order, grouped by message id."""
    grouped: dict[str, list[RecipientState]] = {}
    for message_id, address, state, code, message, attempts in rows:
        grouped.setdefault(message_id, []).append(RecipientState(address, RecipientStatus(state), code, message, attempts))
    return grouped


def stats_from_rows(rows: Iterable[Sequence[Any]]) -> dict[str, AccountStats]:
    """Rows of (account, state, count, min created_at) over pending messages."""
    counts: dict[str, dict[str, int]] = {}
    oldest: dict[str, float] = {}
    for account, state, count, first in rows:
        counts.setdefault(account, {})[state] = count
        oldest[account] = min(first, oldest.get(account, first))
    return {
        account: AccountStats(c.get("queued", 0), c.get("deferred", 0), c.get("sending", 0), oldest[account])
        for account, c in counts.items()
    }
