"""The wire form of a queued message: what ``GET /v1/messages/{id}`` answers and what webhooks carry.

Protocol-free (no aiohttp), so the status API and the webhook notifier share
one shape (docs/api.md, "Queued messages"; ``gateway/openapi.py`` describes it).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .model import MessageState, QueuedMessage, Reply

CANCELLABLE = (MessageState.QUEUED, MessageState.DEFERRED)


def _time(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _reply(reply: Reply | None) -> dict[str, Any] | None:
    return None if reply is None else {"code": reply.code, "message": reply.message}


def message_json(message: QueuedMessage) -> dict[str, Any]:
    """The wire form of a queued message (docs/api.md "Queued messages"); webhooks carry the same."""
    waiting = message.state in CANCELLABLE
    return {
        "id": message.id,
        "account": message.account,
        "messageId": message.message_id,
        "from": message.sender,
        "state": message.state.value,
        "size": message.size,
        "createdAt": _time(message.created_at),
        "nextAttemptAt": _time(message.next_attempt_at) if waiting else None,
        "expiresAt": _time(message.expires_at),
        "finishedAt": _time(message.finished_at),
        "attempts": message.attempts,
        "lastReply": _reply(message.last_reply),
        "recipients": [
            {
                "address": r.address,
                "state": r.state.value,
                "attempts": r.attempts,
                "reply": None if r.code is None and not r.message else {"code": r.code, "message": r.message},
            }
            for r in message.recipients
        ],
    }
