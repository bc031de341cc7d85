"""A process that enqueues forever and prints each id once ``enqueue`` returned; killed by the test.

``python -m tests.queue.enqueuer URL``: 32 concurrent producers, so the kill lands while
batches are in flight.
"""

from __future__ import annotations

import asyncio
import sys

from mailgate.queue import open_store
from tests.queue.support import message


async def main(url: str) -> None:
    store = await open_store(url)

    async def produce(worker: int) -> None:
        n = 0
        while True:
            message_id = await store.enqueue(message(body=f"worker {worker} message {n}"))
            sys.stdout.write(message_id + "\n")
            sys.stdout.flush()
            n += 1

    await asyncio.gather(*(produce(worker) for worker in range(32)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
