"""A gateway whose connection share is 0 forwards to a peer that holds one (docs/admin-api.md, "Shares")."""

from __future__ import annotations

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
