"""The SMTP door of a queued account: 250 only after the commit, then delivery through the queue."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from mailgate.queue import MessageState
from mailgate.queue.retry import RetryPolicy
from mailgate.relay.outbox import OutboxOptions
from tests.ingress.conftest import IngressFactory, account, in_thread, transaction
from tests.smtp_servers import Upstream

LOGIN = ("grafana", "grafana-pass")
SENDER = "alerts@shop.example"
BODY = b"From: alerts@shop.example\r\nTo: ops@example.org\r\nSubject: disk full\r\n\r\nqueued over SMTP\r\n"
FAST = RetryPolicy(first_delay=0.2, max_delay=0.4, busy_delay=0.1)
QUEUED_AS = re.compile(r"2\.0\.0 OK [0-9a-f]{16} queued as (?P<id>[0-9a-f]{32})")


async def test_250_names_the_queued_message_which_is_then_delivered(
    ingress_factory: IngressFactory, upstream: Upstream, tmp_path: Path, unused_tcp_port: int
) -> None:
    queue = OutboxOptions(url=f"sqlite:///{tmp_path}/q.db", owner="gw", policy=FAST)
    gw = await ingress_factory(queue=queue)
    queued: dict[str, Any] = {"delivery": {"mode": "queue"}}
    # The upstream is unreachable at first: the client still hears 250, because the message is stored.
    down = account(upstream, "alerts", senders=["*@shop.example"], clients={LOGIN[0]: LOGIN[1]}, **queued)
    server = down.spec.server.model_copy(update={"port": unused_tcp_port})
    gw.configure(down.model_copy(update={"spec": down.spec.model_copy(update={"server": server})}))

    def send(sender: str = SENDER) -> list[tuple[int, str]]:
        with gw.smtp(login=LOGIN) as client:
            return transaction(client, sender, ["ops@example.org"], BODY)

    replies = await in_thread(send)
    assert [code for code, _ in replies] == [250, 250, 250], replies
    match = QUEUED_AS.fullmatch(replies[-1][1])
    assert match is not None, replies[-1]
    assert gw.gateway.outbox is not None
    stored = await gw.gateway.outbox.get(match["id"])
    assert stored is not None and stored.sender == SENDER and stored.account == "apps/alerts"

    refused = await in_thread(send, "intruder@elsewhere.example")  # not in senders: refused at once, nothing stored
    assert refused[0][0] >= 500 or refused[-1][0] >= 500, refused
    page = await gw.gateway.outbox.list_messages("apps/alerts", state=None, limit=10, after_id=None)
    assert [m.id for m in page.items] == [match["id"]]

    gw.configure(account(upstream, "alerts", senders=["*@shop.example"], clients={LOGIN[0]: LOGIN[1]}, **queued))

    async def delivered() -> bool:
        current = await gw.gateway.outbox.get(match["id"])  # type: ignore[union-attr]
        return current is not None and current.state is MessageState.SENT

    for _ in range(300):
        if await delivered():
            break
        await asyncio.sleep(0.05)
    [message] = upstream.messages
    assert message.data.endswith(BODY) and message.data.startswith(b"Received: from client.test")


async def test_without_a_queue_a_queued_account_answers_451(ingress_factory: IngressFactory, upstream: Upstream) -> None:
    gw = await ingress_factory()
    gw.configure(
        account(upstream, "alerts", senders=["*@shop.example"], clients={LOGIN[0]: LOGIN[1]}, delivery={"mode": "queue"})
    )

    def send() -> list[tuple[int, str]]:
        with gw.smtp(login=LOGIN) as client:
            return transaction(client, SENDER, ["ops@example.org"], BODY)

    replies = await in_thread(send)
    assert replies[-1][0] == 451 and "no queue" in replies[-1][1]
    assert upstream.messages == []
