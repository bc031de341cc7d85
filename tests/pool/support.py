"""Small helpers shared by the pool tests: conditions with deadlines, a message, limits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from mailgate.pool import PoolLimits, SMTPPool

MESSAGE = b"From: app@shop.example\r\nTo: rcpt@example.org\r\nSubject: pool test\r\n\r\nHello from the pool tests.\r\n"
SENDER = "app@shop.example"
RCPT = "rcpt@example.org"


async def eventually(
    predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition", detail: Callable[[], object] | None = None
) -> None:
    """Wait until ``predicate()`` holds, failing after ``timeout``: a condition, never a fixed sleep.

    Polling is needed because the upstream's counters live in another thread.
    The deadline is generous because CI machines are slow, not because anything should take that long.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f": {detail()}" if detail else ""))
        await asyncio.sleep(0.01)


def limits(**overrides: Any) -> PoolLimits:
    """PoolLimits with test-friendly defaults: two connections, a 5 s acquire deadline."""
    values: dict[str, Any] = {"max_connections": 2, "acquire_timeout": 5.0}
    values.update(overrides)
    return PoolLimits(**values)


def account_stats(pool: SMTPPool, account: str) -> dict[str, Any]:
    return pool.stats()[account]


def pool_size(pool: SMTPPool, account: str) -> int:
    """Connections the pool holds or is opening for an account."""
    stats = account_stats(pool, account)
    return int(stats["idle"] + stats["active"] + stats["opening"])
