"""A gateway whose connection share is 0 forwards to a peer that holds one (docs/admin-api.md, "Shares")."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from mailgate.gateway.forward import Forwarder
from tests.gateway.conftest import GatewayFactory, ServiceAccountTokens, account
from tests.smtp_servers import Upstream, _free_port


async def test_share_zero_forwards_to_a_peer_and_returns_its_answer(
    gateway_factory: GatewayFactory, upstream: Upstream
) -> None:
    tokens = ServiceAccountTokens({"checkout-token": ("shop", "checkout")})
    holder = await gateway_factory(tokens)
    forwarder = await gateway_factory(tokens)
    access = {"serviceAccounts": ["shop/checkout"]}
    await holder.configure(account(upstream, access=access, share={"maxConnections": 1}))
    dead_peer = f"http://127.0.0.1:{_free_port()}"
    await forwarder.configure(
        account(upstream, access=access, share={"maxConnections": 0, "peers": [dead_peer, holder.url]})
    )

    # The holder authenticates too, so these succeed only because Authorization was passed through.
    for _ in range(2):  # round-robin: one of the two starts at the dead peer and moves on
        status, body, response = await forwarder.send(token="checkout-token", subject="via a peer")
        assert status == 200, body
        assert response.headers["Content-Type"].startswith("application/json")
    assert len(upstream.messages) == 2
    assert forwarder.gateway.pool.stats() == {}  # the forwarder never opened a session

    # The peer's problems come back unchanged; a bad token is refused before anything is forwarded.
    status, body, _ = await forwarder.send(token="checkout-token", to=["not an address"])
    assert status == 400
    assert body["errors"][0]["field"] == "to[0]"
    status, body, _ = await forwarder.send(token="wrong")
    assert status == 401


async def test_a_forwarded_request_is_never_forwarded_again(gateway_factory: GatewayFactory, upstream: Upstream) -> None:
    first = await gateway_factory()
    second = await gateway_factory()
    await first.configure(account(upstream, share={"maxConnections": 0, "peers": [second.url]}))
    await second.configure(account(upstream, share={"maxConnections": 0, "peers": [first.url]}))
    status, body, response = await first.send()
    assert status == 503
    assert body["type"].endswith("/peer-unavailable")
    assert "Retry-After" in response.headers
    assert upstream.messages == []


@contextlib.contextmanager
def peer_that_never_accepts() -> Iterator[str]:
    """A peer whose connect never completes (a node gone, a firewall dropping SYNs): a listening socket whose
    accept queue is full, so the kernel drops every further SYN."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        with socket.create_connection(listener.getsockname()):  # fills the queue; never accepted
            yield f"http://127.0.0.1:{listener.getsockname()[1]}"


async def test_a_peer_whose_connect_times_out_took_nothing_and_the_next_peer_is_tried() -> None:
    """A connect timeout means the request never left this gateway: "delivery unknown" there would make a caller
    give up (or a person check by hand) for a message nobody could have sent."""
    received: list[bytes] = []

    async def holder(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.json_response({"status": "sent"})

    forwarder = Forwarder(connect_timeout=0.3, total_timeout=10)

    async def forwarding(request: web.Request) -> web.Response:
        return await forwarder.forward(request, await request.read(), peers, "request-1")

    holder_app, front_app = web.Application(), web.Application()
    holder_app.router.add_post("/v1/messages", holder)
    front_app.router.add_post("/v1/messages", forwarding)
    await forwarder.start()
    try:
        async with TestServer(holder_app, host="127.0.0.1") as peer, TestServer(front_app, host="127.0.0.1") as front:
            with peer_that_never_accepts() as hanging:
                peers = [hanging, str(peer.make_url(""))]
                async with aiohttp.ClientSession() as client:
                    for _ in range(2):  # round-robin: one of the two starts at the hanging peer
                        async with client.post(front.make_url("/v1/messages"), data=b'{"x": 1}') as answer:
                            assert answer.status == 200, await answer.text()
    finally:
        await forwarder.close()
    assert received == [b'{"x": 1}', b'{"x": 1}']
