"""The admin API (docs/admin-api.md), probes and metrics, over real HTTP."""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mailgate.adminstatus import GatewayStatus
from mailgate.snapshot import AccountConfig, config_digest
from tests.gateway.conftest import ADMIN_TOKEN, GatewayFactory, GatewayHandle, account
from tests.smtp_servers import StallServer, TestCA, Upstream


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url) as response:
        return response.status, await response.text()


async def status(gw: GatewayHandle) -> dict[str, Any]:
    response = await gw.admin("GET", "/v1/status")
    assert response.status == 200
    body: dict[str, Any] = await response.json()
    GatewayStatus.from_wire(body)  # the documented shape, the one the operator reads
    return body


async def test_admin_token_is_required(gw: GatewayHandle, upstream: Upstream) -> None:
    for token in ("", "wrong", "admin-token-for-tests-but-longer"):
        response = await gw.admin("PUT", "/v1/config", token=token, json={"revision": 1, "accounts": [account(upstream)]})
        assert response.status == 401
        assert response.headers["Content-Type"].startswith("application/problem+json")
    response = await gw.admin("GET", "/v1/status", token="wrong")
    assert response.status == 401
    assert (await status(gw))["revision"] == 0


async def test_revision_rules(gw: GatewayHandle, upstream: Upstream) -> None:
    assert await gw.configure(account(upstream), revision=5) == {"revision": 5, "applied": True}
    # The same revision again is a no-op, even with different content.
    other = account(upstream, name="other")
    assert await gw.configure(other, revision=5) == {"revision": 5, "applied": False}
    assert list((await status(gw))["accounts"]) == ["shop/billing"]
    # Older: 409, nothing changes.
    response = await gw.admin("PUT", "/v1/config", json={"revision": 4, "accounts": [other]})
    assert response.status == 409
    assert (await response.json())["currentRevision"] == 5
    # Per account: the revision must be newer.
    response = await gw.admin("PUT", "/v1/config/accounts/shop/other", params={"revision": "5"}, json=other)
    assert response.status == 409
    response = await gw.admin("PUT", "/v1/config/accounts/shop/other", params={"revision": "6"}, json=other)
    assert response.status == 200
    assert await response.json() == {"revision": 6}
    response = await gw.admin("DELETE", "/v1/config/accounts/shop/billing", params={"revision": "6"})
    assert response.status == 409
    response = await gw.admin("DELETE", "/v1/config/accounts/shop/billing", params={"revision": "7"})
    assert response.status == 204
    response = await gw.admin("DELETE", "/v1/config/accounts/shop/billing", params={"revision": "8"})
    assert response.status == 404
    body = await status(gw)
    assert body["revision"] == 7
    assert list(body["accounts"]) == ["shop/other"]
    status_code, _, _ = await gw.send()
    assert status_code == 404


async def test_invalid_pushes_change_nothing(gw: GatewayHandle, upstream: Upstream) -> None:
    await gw.configure(account(upstream), revision=1)
    bad_spec = account(upstream)
    bad_spec["spec"]["pool"]["maxConnections"] = 0
    response = await gw.admin("PUT", "/v1/config", json={"revision": 2, "accounts": [bad_spec]})
    assert response.status == 400
    assert "maxConnections" in (await response.json())["errors"][0]["field"]
    no_password = account(upstream, name="other")
    no_password["spec"]["auth"] = {"method": "login", "secretRef": {"name": "x"}}
    response = await gw.admin("PUT", "/v1/config", json={"revision": 2, "accounts": [account(upstream), no_password]})
    assert response.status == 422  # well-formed, but the account cannot be served: invalid-configuration
    assert (await response.json())["errors"][0]["field"] == "accounts[shop/other].credentials"
    response = await gw.admin("PUT", "/v1/config/accounts/shop/x", params={"revision": "2"}, json=account(upstream))
    assert response.status == 400  # path and body disagree
    response = await gw.admin("PUT", "/v1/config/accounts/shop/billing", json=account(upstream))
    assert response.status == 400  # no revision
    body = await status(gw)
    assert body["revision"] == 1
    assert list(body["accounts"]) == ["shop/billing"]


async def test_readyz_follows_the_first_snapshot(
    gateway_factory: GatewayFactory, upstream: Upstream, stall_server: StallServer
) -> None:
    gw = await gateway_factory(upstream_timeout=1.0)  # the healthy account's commands must fit, on a loaded machine too
    assert (await get(gw.http, gw.url + "/readyz"))[0] == 503
    assert (await get(gw.http, gw.url + "/livez"))[0] == 200
    assert (await status(gw))["ready"] is False
    broken = account(name="broken", port=stall_server.port)
    await gw.configure(account(upstream), broken, revision=0)  # revision 0 still counts as the first snapshot
    assert (await get(gw.http, gw.url + "/readyz"))[0] == 200
    sent, _, _ = await gw.send(account_key="shop/broken")
    assert sent == 504
    assert (await get(gw.http, gw.url + "/readyz"))[0] == 200  # one broken upstream never makes the pod unready
    sent, _, _ = await gw.send()
    assert sent == 200
    body = await status(gw)
    assert body["ready"] is True
    assert body["accounts"]["shop/billing"]["healthy"] is True
    assert body["accounts"]["shop/broken"]["healthy"] is False
    assert "Timeout" in body["accounts"]["shop/broken"]["lastError"]


async def test_status_reports_digest_and_never_a_credential(gw: GatewayHandle, upstream_factory: Any) -> None:
    sentinel = "SENTINEL-pa55word-4711"
    up = upstream_factory(tls="starttls", users={"billing": sentinel})
    payload = account(up, senders=["*@shop.example"], rateLimit={"messagesPerMinute": 600})
    other = account(up, name="other", senders=["*@shop.example"])
    await gw.configure(payload, other)
    assert (await gw.send())[0] == 200
    response = await gw.admin("GET", "/v1/status")
    text = await response.text()
    assert sentinel not in text
    body = json.loads(text)["accounts"]["shop/billing"]
    assert body["digest"] == config_digest(AccountConfig.model_validate(payload))
    assert body["pool"]["messagesSent"] == 1
    assert body["rateLimit"] == {"messagesPerMinute": 600}
    assert body["senderConflicts"] == ["*@shop.example"]


async def test_metrics_are_exposed(gw: GatewayHandle, upstream: Upstream) -> None:
    upstream.rcpt_replies["bad@example.org"] = "550 5.1.1 no such user"
    await gw.configure(account(upstream), revision=3)
    assert (await gw.send())[0] == 200
    assert (await gw.send(to=["bad@example.org"]))[0] == 502
    assert (await gw.send(account_key="made/up"))[0] == 404
    code, text = await get(gw.http, gw.url + "/metrics")
    assert code == 200
    lines = text.splitlines()
    assert 'mailgate_messages_total{account="shop/billing",outcome="sent"} 1.0' in lines
    assert 'mailgate_messages_total{account="shop/billing",outcome="upstream-refused"} 1.0' in lines
    assert 'mailgate_messages_total{account="-",outcome="unknown-account"} 1.0' in lines
    assert 'mailgate_send_duration_seconds_count{account="shop/billing"} 2.0' in lines
    assert 'mailgate_pool_wait_seconds_count{account="shop/billing"} 1.0' in lines
    assert 'mailgate_pool_connections{account="shop/billing",state="idle"} 1.0' in lines
    assert 'mailgate_upstream_healthy{account="shop/billing"} 1.0' in lines
    assert "mailgate_config_revision 3.0" in lines
    assert "made/up" not in text


async def test_unknown_routes_are_problems(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()
    async with gw.http.get(gw.url + "/nope") as response:
        assert response.status == 404
        assert (await response.json(content_type=None))["type"].endswith("/not-found")
    async with gw.http.put(gw.url + "/v1/accounts/a/b/messages") as response:
        assert response.status == 405
        assert response.headers["Content-Type"].startswith("application/problem+json")


async def test_admin_api_can_serve_tls(gateway_factory: GatewayFactory, upstream: Upstream, tmp_path: Path) -> None:
    """With a certificate the admin API speaks only TLS: token and credentials never cross in clear."""
    ca = TestCA()
    cert = tmp_path / "admin.pem"
    ca.server_cert.private_key_and_cert_chain_pem.write_to_path(str(cert))
    gw = await gateway_factory(admin_tls_cert=str(cert), admin_tls_key=str(cert))
    assert gw.admin_url.startswith("https://")
    trusting = ssl.create_default_context(cadata=ca.ca_pem)
    async with aiohttp.ClientSession() as session:
        body = {"revision": 1, "accounts": [account(upstream)]}
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with session.put(gw.admin_url + "/v1/config", json=body, headers=headers, ssl=trusting) as response:
            assert response.status == 200
        plain = gw.admin_url.replace("https://", "http://") + "/v1/status"
        with pytest.raises(aiohttp.ClientError):
            async with session.get(plain, headers=headers) as response:
                await response.read()
    status, _, _ = await gw.send()
    assert status == 200


async def test_operator_client_pushes_over_tls_trusting_only_the_admin_ca(
    gateway_factory: GatewayFactory, upstream: Upstream, tmp_path: Path
) -> None:
    """The operator's admin client speaks https with --admin-ca-file, and refuses a gateway signed by another CA."""
    from mailgate.operator.admin import AdminClient, GatewayUnreachable
    from mailgate.snapshot import ConfigSnapshot

    ca, other = TestCA(), TestCA()
    cert = tmp_path / "admin.pem"
    ca.server_cert.private_key_and_cert_chain_pem.write_to_path(str(cert))
    trusted, untrusted = tmp_path / "ca.pem", tmp_path / "other.pem"
    trusted.write_text(ca.ca_pem)
    untrusted.write_text(other.ca_pem)
    gw = await gateway_factory(admin_tls_cert=str(cert), admin_tls_key=str(cert))
    assert gw.gateway.admin_port is not None
    snapshot = ConfigSnapshot.model_validate({"revision": 7, "accounts": [account(upstream)]})
    async with AdminClient(ADMIN_TOKEN, gw.gateway.admin_port, ca_file=str(trusted)) as client:
        await client.put_config("127.0.0.1", snapshot)
        assert (await client.status("127.0.0.1")).revision == 7
    async with AdminClient(ADMIN_TOKEN, gw.gateway.admin_port, ca_file=str(untrusted)) as client:
        with pytest.raises(GatewayUnreachable):
            await client.status("127.0.0.1")
