"""Gateways started per test on free loopback ports, an HTTP client, and account payloads for real upstreams.

A gateway fixture depends on ``upstream_factory`` so that it stops (QUIT to
its upstreams) before the upstreams do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from mailgate.gateway.app import Gateway, GatewayOptions
from mailgate.gateway.auth import AllowAnyone, Authenticator, bearer_token
from mailgate.relay.identity import Identity
from tests.smtp_servers import Upstream

ADMIN_TOKEN = "admin-token-for-tests"
SENDER = "app@shop.example"


class ServiceAccountTokens:
    """An Authenticator over a fixed token table, mapping tokens to ServiceAccount identities.

    The same decision path as in-cluster mode (``Identity.service_account``
    consults the account's ``spec.access``), without an apiserver.
    """

    def __init__(self, tokens: dict[str, tuple[str, str]]) -> None:
        self.tokens = tokens

    async def authenticate(self, request: web.Request) -> Identity | None:
        token = bearer_token(request)
        if token is None or token not in self.tokens:
            return None
        return Identity.service_account(*self.tokens[token])


def account(
    upstream: Upstream | None = None,
    *,
    namespace: str = "shop",
    name: str = "billing",
    host: str = "127.0.0.1",
    port: int | None = None,
    password: str | None = None,
    share: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """An AccountConfig payload (camelCase JSON) pointing at a test upstream."""
    server: dict[str, Any] = {"host": host, "port": port if port is not None else upstream.port if upstream else 25}
    server["tls"] = upstream.tls if upstream is not None else "none"
    if upstream is not None and upstream.ca is not None and upstream.tls != "none":
        server["caCertificate"] = upstream.ca.ca_pem
    body: dict[str, Any] = {"namespace": namespace, "name": name, "spec": {"server": server}}
    if upstream is not None and upstream.users:
        user, real_password = next(iter(upstream.users.items()))
        body["spec"]["auth"] = {"method": "login", "secretRef": {"name": f"{name}-smtp"}}
        body["credentials"] = {"username": user, "password": password or real_password}
    pool = {"maxConnections": 2, "acquireTimeoutSeconds": 5}
    pool.update(spec.pop("pool", {}))
    body["spec"]["pool"] = pool
    body["spec"].update(spec)
    if share is not None:
        body["share"] = share
    return body


class GatewayHandle:
    """A started gateway plus the calls tests make on it."""

    def __init__(self, gateway: Gateway, http: aiohttp.ClientSession) -> None:
        self.gateway = gateway
        self.http = http
        self.revision = 0

    @property
    def url(self) -> str:
        return self.gateway.url

    @property
    def admin_url(self) -> str:
        return self.gateway.admin_url

    async def admin(self, method: str, path: str, *, token: str = ADMIN_TOKEN, **kwargs: Any) -> aiohttp.ClientResponse:
        headers = {"Authorization": f"Bearer {token}"}
        async with self.http.request(method, self.admin_url + path, headers=headers, **kwargs) as response:
            await response.read()
            return response

    async def configure(self, *accounts: dict[str, Any], revision: int | None = None) -> dict[str, Any]:
        """PUT a full snapshot with the next revision; asserts it was applied."""
        self.revision = revision if revision is not None else self.revision + 1
        response = await self.admin("PUT", "/v1/config", json={"revision": self.revision, "accounts": list(accounts)})
        body = await response.json()
        assert response.status == 200, body
        return dict(body)

    async def send(
        self,
        payload: dict[str, Any] | None = None,
        /,
        *,
        account_key: str = "shop/billing",
        token: str | None = None,
        **fields: Any,
    ) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
        """POST ``payload``, or a ``message(**fields)``; ``payload`` is positional-only so that no field can bind to it."""
        body = payload if payload is not None else message(**fields)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.post(f"{self.url}/v1/accounts/{account_key}/messages", json=body, headers=headers) as response:
            return response.status, await response.json(content_type=None), response

    async def send_raw(
        self, raw: bytes, *, account_key: str = "shop/billing", params: Any = None, content_type: str = "message/rfc822"
    ) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
        url = f"{self.url}/v1/accounts/{account_key}/messages"
        async with self.http.post(url, data=raw, params=params, headers={"Content-Type": content_type}) as response:
            return response.status, await response.json(content_type=None), response


def message(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"from": SENDER, "to": ["rcpt@example.org"], "subject": "Hello", "text": "Hello from the tests."}
    body.update(fields)
    return body


GatewayFactory = Callable[..., Awaitable[GatewayHandle]]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def gateway_factory(upstream_factory: object, http: aiohttp.ClientSession) -> AsyncIterator[GatewayFactory]:
    started: list[Gateway] = []

    async def make(authenticator: Authenticator | None = None, **overrides: Any) -> GatewayHandle:
        values: dict[str, Any] = {
            "port": 0,
            "admin_port": 0,
            "admin_token": ADMIN_TOKEN,
            "hostname": "gw.test.example",
            "upstream_timeout": 2.0,
            "shutdown_grace": 5.0,
        }
        values.update(overrides)
        gateway = Gateway(authenticator or AllowAnyone(), GatewayOptions(**values))
        await gateway.start()
        started.append(gateway)
        return GatewayHandle(gateway, http)

    yield make
    for gateway in started:
        await gateway.stop()


@pytest.fixture
async def gw(gateway_factory: GatewayFactory) -> GatewayHandle:
    return await gateway_factory()
