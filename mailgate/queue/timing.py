"""The clock and the wake-up both backends share."""

from __future__ import annotations

import asyncio
import time

MAX_WAIT_SECONDS = 30.0  # a missed wake-up (listener reconnecting, another process's SQLite write) costs at most this


def clock(now: float | None) -> float:
    return time.time() if now is None else now


class WaitForWork:
    """A level-triggered wake-up: ``wake`` before ``wait`` is not lost, one ``wait`` consumes it."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def wake(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(max(0.0, min(timeout, MAX_WAIT_SECONDS))):
                await self._event.wait()
        except TimeoutError:
            return False
        finally:
            self._event.clear()
        return True
