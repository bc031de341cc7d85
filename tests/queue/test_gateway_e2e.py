"""Gateways sharing one PostgreSQL queue, end to end: real ``mailgate serve`` processes, a real server, a real upstream.

What a 202 promises must hold across what production does to a cluster: two
replicas claiming from one queue, one of them SIGKILLed in the middle of its
deliveries, the database restarted under load. Every message carries a unique
``X-Test-Seq`` header, so the upstream's intake is counted message by message;
the only duplicates allowed are the ones docs/delivery.md owns up to.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.queue.gateways import (
    Gateways,
    accept_all,
    deliveries,
    lease_owners,
    post,
    queue_flags,
    queued_accounts,
    seq_of,
    states,
    until,
    until_all_final,
)
from tests.queue.postgres import PostgresServer
from tests.smtp_servers import Upstream
from tests.standalone.support import ServeProcess

pytestmark = pytest.mark.timeout(180)

SHARE = 2  # the account's maxConnections (account_yaml): deliveries in flight per gateway


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[Gateways]:
    started = Gateways(tmp_path)
    yield started
    started.close()


async def two_gateways(gateways: Gateways, accounts: Path, dsn: str) -> tuple[ServeProcess, ServeProcess]:
    first = gateways.start(*queue_flags(accounts, dsn, "gw-a"))
    second = gateways.start(*queue_flags(accounts, dsn, "gw-b"))
    await asyncio.gather(first.wait_ready(), second.wait_ready())
    return first, second


def logs(*processes: ServeProcess) -> Callable[[], str]:
    return lambda: "\n".join(process.output()[-3000:] for process in processes)


async def test_two_gateways_on_one_queue_deliver_every_message_exactly_once(
    gateways: Gateways,
    upstream_factory: Callable[..., Upstream],
    postgres_server: PostgresServer,
    postgres_schema: str,
    postgres_dsn: str,
    tmp_path: Path,
) -> None:
    upstream = upstream_factory(users={"billing": "pw"})
    first, second = await two_gateways(gateways, queued_accounts(tmp_path / "accounts.yaml", upstream), postgres_dsn)
    upstream.hold_replies()  # every delivery stays in flight: both gateways must be claiming from the one queue
    accepted = await accept_all([first, second], [f"m{n}" for n in range(40)])

    await until(lambda: len(upstream.held) == 2 * SHARE, 30, "both gateways delivering at their share", logs(first, second))
    owners = lease_owners(postgres_server, postgres_schema)
    assert Counter(owners.values()) == {"gw-a": SHARE, "gw-b": SHARE}, owners
    assert {seq_of(received) for received in upstream.held} == {seq for seq, i in accepted.items() if i in owners}
    upstream.release_replies()

    final = await until_all_final(postgres_server, postgres_schema, 60, logs(first, second))
    assert final == dict.fromkeys(accepted.values(), "sent")
    assert deliveries(upstream) == dict.fromkeys(accepted, 1)


async def test_a_gateway_killed_mid_delivery_leaves_its_messages_to_the_other_after_the_lease(
    gateways: Gateways,
    upstream_factory: Callable[..., Upstream],
    postgres_server: PostgresServer,
    postgres_schema: str,
    postgres_dsn: str,
    tmp_path: Path,
) -> None:
    """The upstream took in the messages the victim had sent and holds their 250s; the victim dies
    before it can record them. Those are the documented "dot sent, verdict never recorded" window:
    the survivor sends them again once the victim's lease expires, so each arrives exactly twice.
    Every other message, including the ones queued behind the victim's, arrives exactly once."""
    upstream = upstream_factory(users={"billing": "pw"})
    victim, survivor = await two_gateways(gateways, queued_accounts(tmp_path / "accounts.yaml", upstream), postgres_dsn)
    upstream.hold_replies()
    accepted = await accept_all([victim, survivor], [f"k{n}" for n in range(12)])
    await until(lambda: len(upstream.held) == 2 * SHARE, 30, "both gateways delivering at their share", logs(victim, survivor))
    owners = lease_owners(postgres_server, postgres_schema)
    cut_off = {seq for seq, queue_id in accepted.items() if owners.get(queue_id) == "gw-a"}
    assert len(cut_off) == SHARE, owners
    assert cut_off <= {seq_of(received) for received in upstream.held}  # their dots went out before the kill

    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(10)
    upstream.release_replies()  # the survivor's two get their 250; the victim's go to a dead socket

    final = await until_all_final(postgres_server, postgres_schema, 60, logs(survivor))
    assert final == dict.fromkeys(accepted.values(), "sent")
    assert deliveries(upstream) == {seq: 2 if seq in cut_off else 1 for seq in accepted}
    async with aiohttp.ClientSession() as http:
        for seq in cut_off:  # the survivor's own status API: sent on the second attempt, the one after the lease
            async with http.get(f"{survivor.url}/v1/messages/{accepted[seq]}") as response:
                shown = await response.json()
            assert (response.status, shown["state"], shown["attempts"]) == (200, "sent", 2), shown
    assert survivor.process.poll() is None


async def test_postgres_restarted_under_load_loses_no_accepted_message_and_the_gateway_recovers_by_itself(
    gateways: Gateways,
    upstream_factory: Callable[..., Upstream],
    postgres_server: PostgresServer,
    postgres_schema: str,
    postgres_dsn: str,
    tmp_path: Path,
) -> None:
    """Clients POST without pause while PostgreSQL goes down and comes back (``pg_ctl stop -m fast``,
    then start: a restart with an outage long enough to be seen). Each request gets 202 (and the
    message is delivered) or 503 queue-unavailable, retryable; the gateway is never restarted."""
    upstream = upstream_factory(users={"billing": "pw"})
    gateway = gateways.start(*queue_flags(queued_accounts(tmp_path / "accounts.yaml", upstream), postgres_dsn, "gw-a"))
    await gateway.wait_ready()
    pid = gateway.process.pid
    accepted: dict[str, str] = {}  # seq -> queue id
    refused: dict[str, dict[str, Any]] = {}  # seq -> the 503's problem body
    unexpected: list[tuple[str, int, dict[str, Any]]] = []
    numbers = itertools.count()
    stop = asyncio.Event()

    async def client(http: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            seq = f"r{next(numbers)}"
            status, body = await post(http, gateway, seq)
            if status == 202:
                accepted[seq] = body["id"]
            elif status == 503:
                refused[seq] = body
                await asyncio.sleep(0.02)  # a client honouring the problem's "retry later", briefly
            else:
                unexpected.append((seq, status, body))

    async with aiohttp.ClientSession() as http:
        clients = [asyncio.create_task(client(http)) for _ in range(8)]
        try:
            await until(lambda: len(accepted) >= 50, 30, "202s before the outage", logs(gateway))
            await asyncio.to_thread(postgres_server.stop, "fast")
            try:
                refused_before = len(refused)
                await until(lambda: len(refused) >= refused_before + 5, 30, "503s during the outage", logs(gateway))
            finally:
                await asyncio.to_thread(postgres_server.start)
            accepted_after = len(accepted)
            await until(lambda: len(accepted) >= accepted_after + 50, 60, "202s after the restart", logs(gateway))
        finally:
            stop.set()
            await asyncio.gather(*clients)

    assert unexpected == []
    assert {body["type"] for body in refused.values()} == {"https://mailgate.dev/problems/queue-unavailable"}
    assert all(body["retryable"] is True and body["status"] == 503 for body in refused.values())

    await until_all_final(postgres_server, postgres_schema, 90, logs(gateway))
    stored = states(postgres_server, postgres_schema)
    counts = deliveries(upstream)
    for seq, queue_id in accepted.items():  # every 202 was stored and delivered
        state, attempts = stored[queue_id]
        assert state == "sent" and 1 <= counts[seq] <= attempts, (seq, stored[queue_id], counts[seq])
    # A 503 stores nothing, but for a commit whose reply the restart cut off (docs/delivery.md,
    # "What an acknowledgement means"): such a message may be stored and delivered. Nothing else is.
    assert set(counts) <= set(accepted) | set(refused)
    assert len(stored) - len(accepted) <= len(refused)
    assert gateway.process.poll() is None and gateway.process.pid == pid
