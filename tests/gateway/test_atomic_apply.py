"""A push that passes the model but cannot be applied changes nothing (issue 18, item 5).

The gateway builds every account of a push (pool settings, TLS context) before
it touches the live configuration; a failure anywhere refuses the whole push
with 422 naming the account and the field, and the previous configuration
keeps serving, whole. Real gateway, real aiosmtpd upstreams.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tests.gateway.conftest import GatewayHandle, account, message
from tests.smtp_servers import Upstream

BAD_CA = "-----BEGIN CERTIFICATE-----\nMIIBnot-a-certificate\n-----END CERTIFICATE-----\n"


def named(upstream: Upstream, name: str, sender_domain: str, **spec: Any) -> dict[str, Any]:
    """Account ``shop/<name>`` at ``upstream``, routing ``*@<sender_domain>``."""
    return account(upstream, name=name, senders=[f"*@{sender_domain}"], **spec)


def with_bad_ca(payload: dict[str, Any]) -> dict[str, Any]:
    payload["spec"]["server"]["caCertificate"] = BAD_CA
    return payload


async def status(gw: GatewayHandle) -> dict[str, Any]:
    response = await gw.admin("GET", "/v1/status")
    assert response.status == 200
    body: dict[str, Any] = await response.json()
    return body


async def send_through(gw: GatewayHandle, key: str, upstream: Upstream, sender: str) -> None:
    """A send through ``key`` answers 200 and reaches ``upstream``."""
    before = len(upstream.messages)
    code, body, _ = await gw.send(account_key=key, **{"from": sender})
    assert code == 200, body
    await asyncio.to_thread(upstream.wait_messages, before + 1)


async def routed(gw: GatewayHandle, sender: str) -> int:
    async with gw.http.post(f"{gw.url}/v1/messages", json=message(**{"from": sender})) as response:
        await response.read()
        return response.status


async def test_a_snapshot_that_fails_to_apply_leaves_the_old_configuration_whole(
    gw: GatewayHandle, upstream_factory: Any
) -> None:
    up_a, up_b = upstream_factory(), upstream_factory()
    up_c = upstream_factory(tls="starttls")
    a, b = named(up_a, "a", "a.example"), named(up_b, "b", "b.example")
    await gw.configure(a, b)
    await send_through(gw, "shop/a", up_a, "x@a.example")
    await send_through(gw, "shop/b", up_b, "x@b.example")
    digests = {key: item["digest"] for key, item in (await status(gw))["accounts"].items()}

    # b dropped, a changed, c new and taking over b's senders, but c's CA is one the ssl module refuses.
    a_changed = named(up_a, "a", "a.example", pool={"maxConnections": 1})
    c_bad = with_bad_ca(named(up_c, "c", "b.example"))
    response = await gw.admin("PUT", "/v1/config", json={"revision": 2, "accounts": [a_changed, c_bad]})
    assert response.status == 422
    assert response.headers["Content-Type"].startswith("application/problem+json")
    problem = await response.json()
    assert problem["errors"][0]["field"] == "accounts[shop/c].spec.server.caCertificate"
    assert "shop/c" in problem["detail"] and "spec.server.caCertificate" in problem["detail"]
    assert "MIIBnot" not in await response.text()

    after = await status(gw)
    assert after["revision"] == 1
    assert {key: item["digest"] for key, item in after["accounts"].items()} == digests
    assert after["accounts"]["shop/a"]["pool"]["maxConnections"] == 2  # a's change was not applied either
    await send_through(gw, "shop/b", up_b, "x@b.example")
    await send_through(gw, "shop/a", up_a, "x@a.example")
    assert (await gw.send(account_key="shop/c", **{"from": "x@b.example"}))[0] == 404
    before_routed = len(up_b.messages)
    assert await routed(gw, "y@b.example") == 200  # routing still points at b
    await asyncio.to_thread(up_b.wait_messages, before_routed + 1)
    assert up_c.messages == []

    # The same revision, corrected, is tried again and applies whole.
    c_good = named(up_c, "c", "b.example")
    assert await gw.configure(a_changed, c_good, revision=2) == {"revision": 2, "applied": True}
    await send_through(gw, "shop/c", up_c, "x@b.example")
    assert (await gw.send(account_key="shop/b", **{"from": "x@b.example"}))[0] == 404
    assert (await status(gw))["accounts"]["shop/a"]["pool"]["maxConnections"] == 1
    before_routed = len(up_c.messages)
    assert await routed(gw, "z@b.example") == 200
    await asyncio.to_thread(up_c.wait_messages, before_routed + 1)


async def test_a_failure_on_the_last_of_many_accounts_applies_none_of_them(gw: GatewayHandle, upstream_factory: Any) -> None:
    up_old, up_new = upstream_factory(), upstream_factory(tls="implicit")
    old = named(up_old, "old", "old.example")
    await gw.configure(old)
    fresh = [named(up_new, f"new{index}", f"new{index}.example") for index in range(5)]
    removed_old_and_bad_last = [*fresh, with_bad_ca(named(up_new, "new9", "new9.example"))]
    response = await gw.admin("PUT", "/v1/config", json={"revision": 2, "accounts": removed_old_and_bad_last})
    assert response.status == 422
    assert (await response.json())["errors"][0]["field"] == "accounts[shop/new9].spec.server.caCertificate"
    assert sorted((await status(gw))["accounts"]) == ["shop/old"]
    assert sorted(gw.gateway.pool.accounts()) == ["shop/old"]
    await send_through(gw, "shop/old", up_old, "x@old.example")
    assert (await gw.send(account_key="shop/new0", **{"from": "x@new0.example"}))[0] == 404

    await gw.configure(*fresh, revision=2)
    await send_through(gw, "shop/new4", up_new, "x@new4.example")


async def test_a_per_account_put_that_fails_to_apply_changes_nothing(gw: GatewayHandle, upstream_factory: Any) -> None:
    up = upstream_factory(tls="starttls")
    await gw.configure(named(up, "b", "b.example"))
    await send_through(gw, "shop/b", up, "x@b.example")
    digest = (await status(gw))["accounts"]["shop/b"]["digest"]

    broken = with_bad_ca(named(up, "b", "b.example", pool={"maxConnections": 1}))
    response = await gw.admin("PUT", "/v1/config/accounts/shop/b", params={"revision": "2"}, json=broken)
    assert response.status == 422
    problem = await response.json()
    assert problem["errors"][0]["field"] == "spec.server.caCertificate"
    assert "shop/b" in problem["detail"]
    after = await status(gw)
    assert after["revision"] == 1 and after["accounts"]["shop/b"]["digest"] == digest
    assert after["accounts"]["shop/b"]["pool"]["maxConnections"] == 2
    await send_through(gw, "shop/b", up, "x@b.example")  # over TLS with the CA it had

    fixed = named(up, "b", "b.example", pool={"maxConnections": 1})
    response = await gw.admin("PUT", "/v1/config/accounts/shop/b", params={"revision": "2"}, json=fixed)
    assert response.status == 200
    await send_through(gw, "shop/b", up, "x@b.example")


async def test_unchanged_accounts_keep_their_tls_context(gw: GatewayHandle, upstream_factory: Any) -> None:
    """A push rebuilds nothing for an account whose settings did not change; one CA, one context."""
    up = upstream_factory(tls="starttls")
    a, b = named(up, "a", "a.example"), named(up, "b", "b.example")
    await gw.configure(a, b)
    pools = gw.gateway.pool._accounts
    context = pools["shop/a"].tls_context
    assert pools["shop/b"].tls_context is context  # same CA and verification: one shared context
    await gw.configure(a, named(up, "b", "b.example", pool={"maxConnections": 1}), named(up, "c", "c.example"))
    assert pools["shop/a"].tls_context is context
    assert pools["shop/c"].tls_context is context
    await send_through(gw, "shop/c", up, "x@c.example")
