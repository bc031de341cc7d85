"""An answer that says "retry, nothing was sent" means nothing was sent; an Idempotency-Key means one send at most.

Issue 18, items 2 and 3, against real upstreams and real peer gateways:
a drop after the final dot is "delivery unknown" (the upstream may have the
message), never "retry"; the Idempotency-Key store remembers exactly the
answers a retry must not undo, also through forwarding; a message whose
account loses its share here while it waits follows the account to a peer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.gateway.conftest import GatewayFactory, GatewayHandle, account, message
from tests.smtp_servers import Upstream

ROUTE = "/v1/accounts/shop/billing/messages"


async def post(gw: GatewayHandle, key: str | None, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any], Any]:
    headers = {"Idempotency-Key": key} if key else {}
    async with gw.http.post(gw.url + ROUTE, json=body or message(), headers=headers) as response:
        return response.status, await response.json(content_type=None), response


async def held_then_dropped(upstream: Upstream, send: asyncio.Task[Any]) -> None:
    """Wait until the upstream has the message and holds its verdict, then hang up on the sender."""
    assert await asyncio.to_thread(upstream.held_event.wait, 10), "the message never reached the upstream"
    upstream.drop_all()
    await asyncio.wait_for(asyncio.shield(send), 10)
    upstream.release_replies()


async def metrics_text(gw: GatewayHandle) -> str:
    async with gw.http.get(gw.url + "/metrics") as response:
        return await response.text()


async def test_drop_after_the_final_dot_is_delivery_unknown_and_a_keyed_retry_does_not_resend(
    gw: GatewayHandle, upstream: Upstream
) -> None:
    await gw.configure(account(upstream))
    upstream.hold_replies()
    first = asyncio.create_task(post(gw, "order-7"))
    await held_then_dropped(upstream, first)
    status, body, response = first.result()
    assert status == 502, body
    assert body["type"].endswith("/delivery-unknown")
    assert body["retryable"] is False
    assert "may have been delivered" in body["detail"]
    assert "Retry-After" not in response.headers

    status, again, response = await post(gw, "order-7")
    assert (status, again["type"]) == (502, body["type"])
    assert response.headers["Idempotent-Replayed"] == "true"
    assert len(upstream.messages) == 1  # the retry did not send a second copy
    assert 'outcome="delivery-unknown"' in await metrics_text(gw)


async def test_a_4xx_reply_to_the_final_dot_is_retryable_and_not_remembered(gw: GatewayHandle, upstream: Upstream) -> None:
    """A 4xx to the dot says "not taken": retry is right and the key must let it through."""
    await gw.configure(account(upstream))
    upstream.data_reply = "452 4.3.1 Insufficient system storage"
    status, body, _ = await post(gw, "order-8")
    assert status == 502, body
    assert body["type"].endswith("/upstream-refused")
    assert body["retryable"] is True
    upstream.data_reply = None
    status, body, response = await post(gw, "order-8")
    assert status == 200, body
    assert "Idempotent-Replayed" not in response.headers
    assert len(upstream.messages) == 1


async def test_greylisting_at_rcpt_is_not_remembered_by_the_key(gw: GatewayHandle, upstream: Upstream) -> None:
    await gw.configure(account(upstream))
    upstream.rcpt_replies["rcpt@example.org"] = "451 4.7.1 Greylisted, try again in 5 minutes"
    status, body, _ = await post(gw, "order-9")
    assert status == 502, body
    assert body["retryable"] is True
    assert upstream.messages == []

    del upstream.rcpt_replies["rcpt@example.org"]  # the greylisting period is over
    status, body, response = await post(gw, "order-9")
    assert status == 200, body
    assert "Idempotent-Replayed" not in response.headers
    assert len(upstream.messages) == 1
    status, _, response = await post(gw, "order-9")  # and now the success is what the key replays
    assert status == 200
    assert response.headers["Idempotent-Replayed"] == "true"
    assert len(upstream.messages) == 1


async def test_a_final_refusal_is_remembered(gw: GatewayHandle, upstream: Upstream) -> None:
    await gw.configure(account(upstream))
    upstream.rcpt_replies["rcpt@example.org"] = "550 5.1.1 No such user"
    status, body, _ = await post(gw, "order-10")
    assert (status, body["retryable"]) == (502, False)
    del upstream.rcpt_replies["rcpt@example.org"]
    status, _, response = await post(gw, "order-10")
    assert status == 502
    assert response.headers["Idempotent-Replayed"] == "true"
    assert upstream.messages == []


# --------------------------------------------------------------------------- forwarding


async def test_forwarding_passes_the_idempotency_key_to_the_peer(gateway_factory: GatewayFactory, upstream: Upstream) -> None:
    """The retry may reach the share holder directly (another replica behind the Service): it must replay."""
    holder = await gateway_factory()
    forwarder = await gateway_factory()
    await holder.configure(account(upstream, share={"maxConnections": 1}))
    await forwarder.configure(account(upstream, share={"maxConnections": 0, "peers": [holder.url]}))
    status, first, _ = await post(forwarder, "order-11")
    assert status == 200, first
    status, again, response = await post(holder, "order-11")
    assert status == 200, again
    assert response.headers["Idempotent-Replayed"] == "true"
    assert again["messageId"] == first["messageId"]
    assert len(upstream.messages) == 1


@pytest.fixture
async def peer_that_hangs_up() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A peer that reads a whole HTTP request and closes the connection without an answer (a crashed gateway)."""
    requests: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
        requests.append(head + await reader.readexactly(length))
        writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", requests
    server.close()
    await server.wait_closed()


async def test_a_peer_failing_after_it_took_the_request_is_delivery_unknown(
    gw: GatewayHandle, upstream: Upstream, peer_that_hangs_up: tuple[str, list[bytes]]
) -> None:
    peer, requests = peer_that_hangs_up
    await gw.configure(account(upstream, share={"maxConnections": 0, "peers": [peer]}))
    status, body, _ = await post(gw, "order-12")
    assert status == 502, body
    assert body["type"].endswith("/delivery-unknown")
    assert len(requests) == 1
    assert b"\r\nidempotency-key: order-12\r\n" in requests[0].lower()
    status, _, response = await post(gw, "order-12")
    assert status == 502
    assert response.headers["Idempotent-Replayed"] == "true"
    assert len(requests) == 1  # not forwarded a second time


# --------------------------------------------------------------------------- shares changing under a waiting message


async def waiting(gw: GatewayHandle, key: str, count: int) -> None:
    """Until ``count`` sends wait for a connection of ``key`` (a condition, polled on the loop)."""
    for _ in range(500):
        if gw.gateway.pool.stats().get(key, {}).get("waiting") == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no send waited for a connection: {gw.gateway.pool.stats()}")


async def test_a_message_waiting_when_the_share_here_drops_to_zero_goes_to_a_peer(
    gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    holder = await gateway_factory()
    gw = await gateway_factory()
    await holder.configure(account(upstream, share={"maxConnections": 1}))
    await gw.configure(account(upstream, pool={"maxConnections": 1}, share={"maxConnections": 1}))
    upstream.hold_replies()
    first = asyncio.create_task(post(gw, None))  # holds the only connection
    assert await asyncio.to_thread(upstream.held_event.wait, 10)
    second = asyncio.create_task(post(gw, "order-13", message(subject="second")))
    await waiting(gw, "shop/billing", 1)

    await gw.configure(account(upstream, share={"maxConnections": 0, "peers": [holder.url]}))
    upstream.release_replies()
    status, body, _ = await asyncio.wait_for(second, 15)
    assert status == 200, body  # not 404 unknown-account, not a 503 for a message a peer can send
    status, body, _ = await asyncio.wait_for(first, 15)
    assert status == 200, body
    subjects = sorted(m.data.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0] for m in upstream.messages)
    assert subjects == [b"Hello", b"second"]
    assert holder.gateway.pool.stats()["shop/billing"]["messages_sent"] == 1
