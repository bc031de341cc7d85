"""Queued-message counts in the admin status (``GET /v1/status`` ``queue``), as a real gateway writes them and the
operator's client reads them.

A real gateway with a SQLite queue in the test's directory; the retry delay is an hour, so a message whose
upstream is unreachable stays ``deferred`` while the test looks at it, and the queue's counts are refreshed
every 50 ms instead of every 15 s.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from mailgate.operator.admin import AdminClient, GatewayReport
from mailgate.operator.queuestatus import NOTHING_PENDING, QueueCounts
from mailgate.queue.retry import RetryPolicy
from tests.gateway.conftest import ADMIN_TOKEN, GatewayFactory, GatewayHandle, account, message
from tests.gateway.test_queued_send import post, queue_options
from tests.smtp_servers import Upstream

AN_HOUR = RetryPolicy(first_delay=3600.0, max_delay=3600.0)
QUEUED = {"mode": "queue"}


async def queue_of(gw: GatewayHandle, key: str) -> dict[str, Any] | None:
    response = await gw.admin("GET", "/v1/status")
    assert response.status == 200
    body = await response.json()
    queue: dict[str, Any] | None = body["accounts"][key]["queue"]
    return queue


async def until_queue(gw: GatewayHandle, key: str, **counts: int) -> dict[str, Any]:
    """The account's ``queue`` once it shows ``counts``."""
    deadline = time.monotonic() + 15
    while True:
        queue = await queue_of(gw, key)
        assert queue is not None
        if all(queue[name] == value for name, value in counts.items()):
            return queue
        assert time.monotonic() < deadline, f"queue of {key} is {queue}, not {counts}"
        await asyncio.sleep(0.05)


async def operator_reads(gw: GatewayHandle) -> GatewayReport:
    assert gw.gateway.admin_port is not None
    async with AdminClient(ADMIN_TOKEN, gw.gateway.admin_port) as client:
        return await client.status("127.0.0.1")


async def test_the_status_counts_pending_messages_per_account_and_the_operator_reads_them(
    gateway_factory: GatewayFactory, tmp_path: Path, upstream: Upstream, unused_tcp_port: int
) -> None:
    gw = await gateway_factory(queue=queue_options(tmp_path, policy=AN_HOUR, housekeeping_interval=0.05))
    await gw.configure(
        account(upstream, port=unused_tcp_port, delivery=QUEUED),  # nothing listens there: every attempt defers
        account(upstream, name="quiet", delivery=QUEUED),
    )
    assert await queue_of(gw, "shop/billing") == {"queued": 0, "deferred": 0, "sending": 0, "oldestCreatedAt": None}
    accepted = time.time()
    status, body, _ = await post(gw, message())
    assert status == 202, body

    queue = await until_queue(gw, "shop/billing", deferred=1)
    assert (queue["queued"], queue["sending"]) == (0, 0)
    oldest = datetime.fromisoformat(queue["oldestCreatedAt"])
    assert oldest.utcoffset() is not None and int(accepted) <= oldest.timestamp() <= time.time()
    assert await queue_of(gw, "shop/quiet") == {"queued": 0, "deferred": 0, "sending": 0, "oldestCreatedAt": None}

    report = await operator_reads(gw)
    assert report.queues == {
        "shop/billing": QueueCounts(queued=0, deferred=1, sending=0, oldest=oldest.replace(microsecond=0)),
        "shop/quiet": NOTHING_PENDING,
    }
    assert report.queues["shop/quiet"] is NOTHING_PENDING  # one shared instance for the many quiet accounts

    async with gw.http.delete(f"{gw.url}/v1/messages/{body['id']}") as response:
        assert response.status == 204
    await until_queue(gw, "shop/billing", deferred=0)  # a cancelled message is no longer pending
    assert (await operator_reads(gw)).queues["shop/billing"] is NOTHING_PENDING


async def test_a_gateway_without_a_queue_reports_null_and_the_operator_reads_none(gw: GatewayHandle, upstream: Upstream) -> None:
    await gw.configure(account(upstream))
    assert await queue_of(gw, "shop/billing") is None
    assert (await operator_reads(gw)).queues == {"shop/billing": None}
