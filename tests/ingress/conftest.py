"""A real gateway with the SMTP ingress attached, real upstreams, and helpers for real SMTP clients.

The gateway runs on the test's event loop; blocking clients (smtplib) run in
a thread and command-line clients (swaks, msmtp) as subprocesses, so the
loop keeps serving while they talk to it.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pytest
from aiosmtpd.smtp import SMTP, Envelope

from mailgate.gateway.app import Gateway, GatewayOptions
from mailgate.gateway.auth import AllowAnyone
from mailgate.ingress.attach import attach
from mailgate.ingress.options import IngressOptions, parse_networks
from mailgate.ingress.server import IngressServer
from mailgate.passwords import hash_password
from mailgate.relay.outbox import OutboxOptions
from mailgate.snapshot import AccountConfig, ConfigSnapshot
from tests.smtp_servers import TestCA, Upstream

P = ParamSpec("P")
T = TypeVar("T")

HOST = "127.0.0.1"
FAST_HASH = 4  # scrypt cost for test logins: the format and checks are the same, the CPU cost is not


@dataclass
class TLSFiles:
    cert: Path
    key: Path
    ca: Path
    ca_obj: TestCA

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca_obj.ca.configure_trust(context)
        return context


@pytest.fixture(scope="session")
def tls_files(test_ca: TestCA, tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    folder = tmp_path_factory.mktemp("ingress-tls")
    cert, key, ca = folder / "cert.pem", folder / "key.pem", folder / "ca.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in test_ca.server_cert.cert_chain_pems))
    key.write_bytes(test_ca.server_cert.private_key_pem.bytes())
    ca.write_bytes(test_ca.ca.cert_pem.bytes())
    return TLSFiles(cert, key, ca, test_ca)


def account(
    upstream: Upstream,
    name: str,
    *,
    namespace: str = "apps",
    senders: list[str] | None = None,
    clients: dict[str, str] | None = None,
    **spec: Any,
) -> AccountConfig:
    """An account relaying to ``upstream``; ``clients`` are SMTP logins (username: password), hashed here."""
    server: dict[str, Any] = {"host": HOST, "port": upstream.port, "tls": upstream.tls}
    if upstream.ca is not None and upstream.tls != "none":
        server["caCertificate"] = upstream.ca.ca_pem
    body: dict[str, Any] = {
        "namespace": namespace,
        "name": name,
        "spec": {"server": server, "senders": senders or [], "pool": {"maxConnections": 2, "acquireTimeoutSeconds": 5}},
        "smtpClients": [{"username": u, "passwordHash": hash_password(p, log2_n=FAST_HASH)} for u, p in (clients or {}).items()],
    }
    if upstream.users:
        user, password = next(iter(upstream.users.items()))
        body["spec"]["auth"] = {"method": "login", "secretRef": {"name": f"{name}-smtp"}}
        body["credentials"] = {"username": user, "password": password}
    pool = spec.pop("pool", {})
    body["spec"]["pool"].update(pool)
    body["spec"].update(spec)
    return AccountConfig.model_validate(body)


@dataclass
class IngressGateway:
    gateway: Gateway
    ingress: IngressServer
    tls: TLSFiles
    revision: int = 0
    _extra: list[Any] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.ingress.ports["smtp"]

    @property
    def tls_port(self) -> int:
        return self.ingress.ports["smtps"]

    def configure(self, *accounts: AccountConfig) -> None:
        self.revision += 1
        self.gateway.registry.apply_snapshot(ConfigSnapshot(revision=self.revision, accounts=list(accounts)))

    def smtp(self, *, starttls: bool = True, login: tuple[str, str] | None = None, timeout: float = 10) -> smtplib.SMTP:
        """A connected smtplib client (call from a thread): EHLO, STARTTLS and AUTH as asked."""
        client = smtplib.SMTP(HOST, self.port, local_hostname="client.test", timeout=timeout)
        client.ehlo()
        if starttls:
            client.starttls(context=self.tls.client_context())
            client.ehlo()
        if login is not None:
            client.login(*login)
        return client


IngressFactory = Callable[..., Awaitable[IngressGateway]]


class PlainUpstream:
    """An aiosmtpd server on this loop whose extensions a test chooses (``Upstream`` always offers SMTPUTF8).

    Quacks like ``Upstream`` for ``account()`` (``port``, ``tls``, ``ca``, ``users``).
    """

    tls = "none"
    ca = None
    users: dict[str, str] = {}

    def __init__(self, *, smtputf8: bool) -> None:
        self.smtputf8 = smtputf8
        self.messages: list[Envelope] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Envelope) -> str:
        self.messages.append(envelope)
        return "250 2.0.0 OK"

    async def __aenter__(self) -> PlainUpstream:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(self, hostname="plain.test", enable_SMTPUTF8=self.smtputf8, loop=loop), HOST, 0
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()


@pytest.fixture
async def ingress_factory(upstream_factory: object, tls_files: TLSFiles) -> AsyncIterator[IngressFactory]:
    """Start gateways with the SMTP ingress; each is stopped (sessions drained, pool closed) at the end."""
    started: list[Gateway] = []

    async def make(
        *,
        upstream_timeout: float = 2.0,
        admin_token: str | None = None,
        queue: OutboxOptions | None = None,
        name: str = "gw.test.example",
        gateway: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> IngressGateway:
        """``overrides`` are IngressOptions; ``gateway`` more GatewayOptions (peer_admin_port, admin TLS...)."""
        values: dict[str, Any] = {
            "port": 0,
            "host": HOST,
            "tls_cert": str(tls_files.cert),
            "tls_key": str(tls_files.key),
            "hostname": name,
            "shutdown_grace": 5.0,
        }
        if "trusted_networks" in overrides:
            overrides["trusted_networks"] = parse_networks(overrides["trusted_networks"])
        values.update(overrides)
        gateway_options = GatewayOptions(
            host=HOST,
            port=0,
            admin_port=0 if admin_token else None,
            admin_token=admin_token,
            hostname=name,
            upstream_timeout=upstream_timeout,
            shutdown_grace=5.0,
            queue=queue,
            **(gateway or {}),
        )
        process = Gateway(AllowAnyone(), gateway_options)
        ingress = attach(process, IngressOptions(**values))
        await process.start()
        started.append(process)
        return IngressGateway(process, ingress, tls_files)

    yield make
    for process in reversed(started):  # the last started first: a gateway may name an earlier one as its peer
        await process.stop()


@pytest.fixture
async def gw(ingress_factory: IngressFactory) -> IngressGateway:
    return await ingress_factory()


def transaction(client: smtplib.SMTP, sender: str, recipients: list[str], data: bytes, *options: str) -> list[tuple[int, str]]:
    """MAIL, RCPT..., DATA step by step, collecting every reply instead of raising at the first refusal."""
    replies = [client.mail(sender, list(options))]
    if replies[-1][0] != 250:
        return _decoded(replies)
    replies += [client.rcpt(rcpt) for rcpt in recipients]
    if not any(code == 250 for code, _ in replies[1:]):
        client.rset()
        return _decoded(replies)
    try:
        replies.append(client.data(data))
    except smtplib.SMTPDataError as exc:  # refused at DATA itself (before 354)
        assert isinstance(exc.smtp_error, bytes), exc  # smtplib raises it with the reply's raw bytes
        replies.append((exc.smtp_code, exc.smtp_error))
    return _decoded(replies)


def _decoded(replies: list[tuple[int, bytes]]) -> list[tuple[int, str]]:
    return [(code, text.decode("utf-8", "replace")) for code, text in replies]


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for ``condition`` on the event loop, with a deadline (a condition, not a sleep, decides)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.01)


async def in_thread(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    return await asyncio.to_thread(func, *args, **kwargs)
