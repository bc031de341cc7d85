"""Real ``mailgate serve`` processes on one PostgreSQL queue, for the end-to-end tests of durable delivery.

Each message a test sends carries a unique ``X-Test-Seq`` header, so what the
upstream received can be counted per message; the queue's own rows are read
with ``psql`` (the database is the record the tests check the gateways against).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from tests.queue.postgres import PASSWORD, PostgresServer
from tests.smtp_servers import Received, Upstream
from tests.standalone.support import MESSAGE, ServeProcess, account_yaml, start_serve, write_atomically

QUEUED = "  delivery: {mode: queue}\n"
ACCOUNT_PATH = "/v1/accounts/shop/billing/messages"
SEQ = re.compile(rb"^X-Test-Seq: (\S+)\r$", re.M)


class Gateways:
    """``mailgate serve`` processes of one test; ``close`` stops those still running and checks their logs."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[ServeProcess] = []

    def start(self, *args: str) -> ServeProcess:
        process = start_serve(self.tmp_path, *args, name=f"serve{len(self.started)}")
        self.started.append(process)
        return process

    def close(self) -> None:
        for process in self.started:
            running = process.process.poll() is None
            code = process.stop()
            output = process.output()
            assert PASSWORD not in output, "the queue DSN's password was logged"
            if running:
                assert code == 0, output  # SIGTERM is a clean shutdown


def queued_accounts(path: Path, upstream: Upstream, *, extra: str = "") -> Path:
    """The test account (``account_yaml``) in queue mode, plus any further YAML documents."""
    write_atomically(path, account_yaml(upstream) + QUEUED + extra)
    return path


def queue_flags(accounts: Path, dsn: str, owner: str, *, lease: float = 3.0) -> list[str]:
    """A short lease, so a dead gateway's deliveries are taken over within seconds; fast retries."""
    return [
        "-f", str(accounts), "--insecure-no-auth", "--queue", dsn, "--queue-owner", owner,
        "--queue-lease", str(lease), "--queue-retry-delay", "0.5", "--queue-max-retry-delay", "1",
    ]  # fmt: skip


def seq_message(seq: str) -> dict[str, Any]:
    return {**MESSAGE, "subject": f"message {seq}", "headers": {"X-Test-Seq": seq}}


async def post(http: aiohttp.ClientSession, gateway: ServeProcess, seq: str) -> tuple[int, dict[str, Any]]:
    async with http.post(gateway.url + ACCOUNT_PATH, json=seq_message(seq)) as response:
        body: dict[str, Any] = await response.json(content_type=None)
        return response.status, body


async def accept_all(gateways: list[ServeProcess], seqs: list[str]) -> dict[str, str]:
    """POST each message through the gateways in turn, concurrently; every one must get its 202. Returns seq -> queue id."""
    async with aiohttp.ClientSession() as http:
        answers = await asyncio.gather(*(post(http, gateways[n % len(gateways)], seq) for n, seq in enumerate(seqs)))
    for seq, (status, body) in zip(seqs, answers, strict=True):
        assert status == 202, (seq, body)
    return {seq: body["id"] for seq, (_, body) in zip(seqs, answers, strict=True)}


def seq_of(received: Received) -> str:
    match = SEQ.search(received.data)
    assert match is not None, received.data[:500]
    return match[1].decode()


def deliveries(upstream: Upstream) -> Counter[str]:
    """How many times the upstream took in each message (by its X-Test-Seq)."""
    return Counter(seq_of(received) for received in list(upstream.messages))


def rows(server: PostgresServer, schema: str, sql: str) -> list[list[str]]:
    return [line.split("|") for line in server.psql(sql, schema=schema).splitlines() if line]


def states(server: PostgresServer, schema: str) -> dict[str, tuple[str, int]]:
    """Every stored message: queue id -> (state, attempts)."""
    return {row[0]: (row[1], int(row[2])) for row in rows(server, schema, "SELECT id, state, attempts FROM mailgate_messages")}


def lease_owners(server: PostgresServer, schema: str) -> dict[str, str]:
    """Messages being delivered: queue id -> the gateway (``--queue-owner``) holding the lease."""
    found = rows(server, schema, "SELECT id, lease_owner FROM mailgate_messages WHERE state = 'sending'")
    return {row[0]: row[1] for row in found}


async def until(condition: Callable[[], bool], timeout: float, what: str, log: Callable[[], str] = lambda: "") -> None:
    """Poll ``condition`` (it may block briefly: it runs in a thread) until true, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout:.0f} s\n{log()}")
        await asyncio.sleep(0.1)


async def until_all_final(
    server: PostgresServer, schema: str, timeout: float, log: Callable[[], str] = lambda: ""
) -> dict[str, str]:
    """Until no stored message is pending; returns queue id -> final state (delivery over: counts can be compared)."""

    def final() -> bool:
        return all(state in ("sent", "failed", "cancelled") for state, _ in states(server, schema).values())

    await until(final, timeout, "every stored message in a final state", log)
    return {queue_id: state for queue_id, (state, _) in states(server, schema).items()}
