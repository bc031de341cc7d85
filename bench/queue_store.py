"""Queue store enqueue throughput: N concurrent durable enqueues of a 2 KB message, SQLite and PostgreSQL.

``python -m bench.queue_store`` (about half a minute). It starts its own PostgreSQL
(tests/queue/postgres.py: Debian's postgresql, fsync on) and a SQLite file in a temporary
directory on the same disk. Each round enqueues N messages at once through one store and
waits for every acknowledgement, i.e. every durable commit; the median round is reported,
with the number of commits group commit needed. For scale, the same store enqueues
``--sequential`` messages one at a time (one commit each). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import format_table
from mailgate.queue import NewMessage, QueueStore, open_store
from tests.queue.postgres import PostgresServer


@dataclass
class Result:
    backend: str
    concurrent_msgs_per_s: float
    commits_per_round: float
    sequential_msgs_per_s: float


def two_kb_message(n: int, size: int) -> NewMessage:
    head = f"From: app@example.com\r\nTo: ops@example.com\r\nSubject: bench {n}\r\n\r\n".encode()
    body = (b"x" * 76 + b"\r\n") * (size // 78 + 1)
    return NewMessage("bench/account", "app@example.com", ["ops@example.com"], head + body[: size - len(head)])


async def measure(store: QueueStore, backend: str, messages: int, size: int, rounds: int, sequential: int) -> Result:
    await asyncio.gather(*(store.enqueue(two_kb_message(n, size)) for n in range(50)))  # warm connections and caches
    rates, commits = [], []
    for _ in range(rounds):
        before = store.counters.enqueue_commits
        batch = [two_kb_message(n, size) for n in range(messages)]
        started = time.perf_counter()
        await asyncio.gather(*(store.enqueue(m) for m in batch))
        rates.append(messages / (time.perf_counter() - started))
        commits.append(store.counters.enqueue_commits - before)
    started = time.perf_counter()
    for n in range(sequential):
        await store.enqueue(two_kb_message(n, size))
    one_by_one = sequential / (time.perf_counter() - started)
    return Result(backend, statistics.median(rates), statistics.median(commits), one_by_one)


async def run(args: argparse.Namespace) -> list[Result]:
    results = []
    with tempfile.TemporaryDirectory(prefix="mailgate-bench-queue-", dir=args.dir) as workdir:
        store = await open_store(f"sqlite://{Path(workdir) / 'queue.db'}")
        try:
            results.append(await measure(store, "sqlite", args.messages, args.size, args.rounds, args.sequential))
        finally:
            await store.close()
    with PostgresServer() as server:
        store = await open_store(server.create_database("bench"))
        try:
            results.append(await measure(store, "postgres", args.messages, args.size, args.rounds, args.sequential))
        finally:
            await store.close()
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.queue_store", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000, help="concurrent enqueues per round (default 2000)")
    parser.add_argument("--size", type=int, default=2048, help="message size in bytes (default 2048)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per backend; the median is reported (default 5)")
    parser.add_argument("--sequential", type=int, default=200, help="one-at-a-time enqueues for comparison (default 200)")
    parser.add_argument("--dir", default=None, help="where the SQLite file goes (default: the temporary directory)")
    args = parser.parse_args(argv)
    results = asyncio.run(run(args))
    print(
        format_table(
            ["backend", f"{args.messages} concurrent: msgs/s", "commits per round", "one at a time: msgs/s"],
            [
                [r.backend, f"{r.concurrent_msgs_per_s:,.0f}", f"{r.commits_per_round:.0f}", f"{r.sequential_msgs_per_s:,.0f}"]
                for r in results
            ],
        )
    )
    summary: dict[str, float] = {"messages": args.messages, "size_bytes": args.size}
    for r in results:
        summary[f"{r.backend}_enqueue_msgs_per_s"] = round(r.concurrent_msgs_per_s)
        summary[f"{r.backend}_commits_per_round"] = r.commits_per_round
        summary[f"{r.backend}_sequential_msgs_per_s"] = round(r.sequential_msgs_per_s)
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    main()
