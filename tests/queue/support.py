"""Messages for the queue tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mailgate.queue import NewMessage, QueueStore
from mailgate.queue.retry import RetryPolicy

T0 = 1_700_000_000.0  # the tests' clock: every store call gets an explicit `now`
# Retry delays of tenths of a second, so that outages and backoff play out in real time; throttling pauses long.
FAST_RETRY = RetryPolicy(first_delay=0.2, max_delay=0.4, throttle_delay=30.0, throttle_max_delay=30.0, busy_delay=0.1)


def message(
    account: str = "mail/alerts",
    recipients: Sequence[str] = ("ops@example.com",),
    body: str = "hello",
    **fields: Any,
) -> NewMessage:
    data = f"From: app@example.com\r\nTo: {', '.join(recipients)}\r\nSubject: test\r\n\r\n{body}\r\n".encode()
    return NewMessage(account=account, sender="app@example.com", recipients=recipients, data=data, **fields)


class WatchedStore:
    """The real store, every method passed through; a subclass overrides the ones it watches (counting calls)."""

    def __init__(self, store: QueueStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)
