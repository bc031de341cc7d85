"""SMTP to a gateway holding no connection share of the account: a peer that holds one sends it (issue 16).

Real gateways on loopback, each with its SMTP ingress and admin API, relaying
to a real upstream. Gateway ``a`` holds a share of 0 and lists ``b``'s send
URL as its peer; it reaches ``b``'s admin API at the same host on the peers'
admin port (``GatewayOptions.peer_admin_port``: in a cluster every pod has the
same one) with the admin token both share.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from mailgate.relay.outbox import OutboxOptions
from mailgate.snapshot import AccountConfig, AccountShare
from tests.ingress.conftest import HOST, IngressFactory, IngressGateway, TLSFiles, account, in_thread, transaction
from tests.smtp_servers import TestCA, Upstream, _free_port

LOGIN = ("grafana", "grafana-pass")
SENDER = "alerts@shop.example"
TOKEN = "peer-relay-admin-token"
BODY = b"From: alerts@shop.example\r\nTo: ops@example.org\r\nSubject: disk full\r\n\r\nvia a peer\r\n"
RECEIVED_BY = re.compile(
    rb"\AReceived: from client\.test \(\[127\.0\.0\.1\]\)\r\n\tby (?P<host>[a-z.-]+) \(mailgate\) with ESMTPSA"
)
OK_ID = re.compile(r"[0-9a-f]{16}")

Start = Callable[..., Awaitable[IngressGateway]]


@pytest.fixture
def start(ingress_factory: IngressFactory) -> Start:
    """Gateways with the SMTP ingress and an admin API (``ingress_factory`` stops them at the end)."""

    async def make(name: str, *, admin_tls: TLSFiles | None = None, **options: Any) -> IngressGateway:
        """``admin_tls``: the admin API's certificate and key (also what its peers are trusted by)."""
        if admin_tls is not None:
            options = {"admin_tls_cert": str(admin_tls.cert), "admin_tls_key": str(admin_tls.key), **options}
        return await ingress_factory(name=name, admin_token=TOKEN, queue=options.pop("queue", None), gateway=options)

    return make


def alerts(upstream: Upstream, *, peers: list[str] | None = None, **spec: Any) -> AccountConfig:
    """The account with a share of 1 connection, or of 0 and ``peers`` to forward to."""
    config = account(upstream, "alerts", senders=["*@shop.example"], clients={LOGIN[0]: LOGIN[1]}, **spec)
    share = AccountShare(max_connections=1) if peers is None else AccountShare(max_connections=0, peers=peers)
    return config.model_copy(update={"share": share})


def send(gw: IngressGateway, recipients: list[str] | None = None) -> list[tuple[int, str]]:
    with gw.smtp(login=LOGIN) as client:
        return transaction(client, SENDER, recipients or ["ops@example.org"], BODY)


async def pair(
    start: Start, upstream: Upstream, admin_tls: TLSFiles | None = None, b_tls: TLSFiles | None = None
) -> tuple[IngressGateway, IngressGateway]:
    """``b`` holds the account's share; ``a`` holds none and forwards to ``b``."""
    b = await start("gw-b.test", admin_tls=b_tls or admin_tls)
    assert b.gateway.admin_port is not None
    a = await start("gw-a.test", peer_admin_port=b.gateway.admin_port, admin_tls=admin_tls)
    b.configure(alerts(upstream))
    a.configure(alerts(upstream, peers=[b.gateway.url]))
    return a, b


@pytest.mark.parametrize("admin_tls", [False, True], ids=["http", "https"])
async def test_smtp_to_a_zero_share_gateway_is_sent_once_by_its_peer(
    start: Start, upstream: Upstream, tls_files: TLSFiles, admin_tls: bool
) -> None:
    a, b = await pair(start, upstream, admin_tls=tls_files if admin_tls else None)
    assert b.gateway.admin_url.startswith("https://" if admin_tls else "http://")
    replies = await in_thread(send, a)
    assert [code for code, _ in replies] == [250, 250, 250], replies
    assert re.fullmatch(r"2\.0\.0 OK [0-9a-f]{16} relayed", replies[-1][1])
    [message] = upstream.messages
    received = RECEIVED_BY.match(message.data)
    assert received is not None and received["host"] == b"gw-a.test", message.data[:200]
    assert message.data[received.end() :].split(b"\r\n", 2)[2] == BODY  # A's Received header, then the bytes as sent
    assert message.mail_from == SENDER and message.rcpt_tos == ["ops@example.org"]
    assert a.gateway.pool.stats() == {}  # a never opened an upstream session: b sent it
    assert "apps/alerts" in b.gateway.pool.stats()


async def test_peers_are_taken_in_turn_and_an_unreachable_one_is_skipped(start: Start, upstream: Upstream) -> None:
    a, b = await pair(start, upstream)
    dead = f"http://127.0.0.2:{_free_port()}"  # the peers' admin port, on an address where nothing listens
    a.configure(alerts(upstream, peers=[dead, b.gateway.url]))
    for _ in range(2):  # round-robin: one of the two starts at the dead peer and moves on
        replies = await in_thread(send, a)
        assert replies[-1][0] == 250, replies
    assert len(upstream.messages) == 2


async def test_a_peer_is_trusted_by_our_admin_chain_or_the_admin_ca_only(
    start: Start, upstream: Upstream, tls_files: TLSFiles, tmp_path: Path
) -> None:
    other = TestCA()  # another issuer: a man in the middle would hold a certificate like this one
    foreign = TLSFiles(tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem", other)
    foreign.cert.write_bytes(b"".join(blob.bytes() for blob in other.server_cert.cert_chain_pems))
    foreign.key.write_bytes(other.server_cert.private_key_pem.bytes())
    foreign.ca.write_bytes(other.ca.cert_pem.bytes())
    a, b = await pair(start, upstream, admin_tls=tls_files, b_tls=foreign)
    replies = await in_thread(send, a)
    assert replies[-1][0] == 451 and replies[-1][1].startswith("4.4.1 no peer gateway could be reached"), replies
    assert upstream.messages == []

    # With the CA that issues the admin certificates named (as the operator names it), its certificates are trusted.
    assert b.gateway.admin_port is not None
    trusting = await start("gw-c.test", peer_admin_port=b.gateway.admin_port, admin_tls=tls_files, admin_ca_file=str(foreign.ca))
    trusting.configure(alerts(upstream, peers=[b.gateway.url]))
    replies = await in_thread(send, trusting)
    assert replies[-1][0] == 250, replies
    assert len(upstream.messages) == 1


async def test_an_unreachable_peer_is_a_451_and_nothing_is_sent(start: Start, upstream: Upstream) -> None:
    a = await start("gw-a.test", peer_admin_port=_free_port())
    a.configure(alerts(upstream, peers=[f"http://{HOST}:{_free_port()}"]))
    replies = await in_thread(send, a)
    assert replies[-1][0] == 451 and replies[-1][1].startswith("4.4.1 "), replies
    assert "no peer gateway could be reached" in replies[-1][1]
    assert upstream.messages == []


async def test_a_peer_that_would_forward_again_refuses_and_the_client_hears_451(start: Start, upstream: Upstream) -> None:
    a, b = await pair(start, upstream)
    b.configure(alerts(upstream, peers=[a.gateway.url]))  # a stale peer list: b holds no share either
    replies = await in_thread(send, a)
    assert replies[-1][0] == 451 and replies[-1][1].startswith("4.4.1 "), replies
    assert "holds no connection share of account apps/alerts either" in replies[-1][1]
    assert upstream.messages == []
    assert a.gateway.pool.stats() == {} and b.gateway.pool.stats() == {}


@pytest.mark.parametrize(
    ("knob", "value", "recipients"),
    [
        ("data_reply", "550 5.7.1 message content rejected", ["ops@example.org"]),
        ("data_reply", "452 4.3.1 insufficient system storage", ["ops@example.org"]),
        ("rcpt_replies", {"gone@example.org": "550 5.1.1 no such user"}, ["gone@example.org"]),
        ("rcpt_replies", {"gone@example.org": "550 5.1.1 no such user"}, ["ops@example.org", "gone@example.org"]),
    ],
    ids=["upstream-550", "upstream-452", "every-recipient-refused", "partly-delivered"],
)
async def test_the_peers_outcome_is_the_reply_a_local_send_gives(
    start: Start, upstream: Upstream, knob: str, value: object, recipients: list[str]
) -> None:
    a, b = await pair(start, upstream)
    setattr(upstream, knob, value)
    local = await in_thread(send, b, recipients)  # b holds the share: a local send
    forwarded = await in_thread(send, a, recipients)
    assert local[-1][0] >= 400, local
    assert (forwarded[-1][0], OK_ID.sub("ID", forwarded[-1][1])) == (local[-1][0], OK_ID.sub("ID", local[-1][1]))
    assert a.gateway.pool.stats() == {}


async def test_a_peer_that_fails_after_taking_the_message_is_delivery_unknown(start: Start, upstream: Upstream) -> None:
    """A peer that read the whole request and then dropped the connection may have sent the message."""

    async def take_and_drop(request: web.Request) -> web.StreamResponse:
        await request.read()
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    app = web.Application()
    app.router.add_post("/v1/relay/accounts/{namespace}/{name}", take_and_drop)
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, HOST, port).start()
    try:
        a = await start("gw-a.test", peer_admin_port=port)
        a.configure(alerts(upstream, peers=[f"http://{HOST}:{port}"]))
        replies = await in_thread(send, a)
    finally:
        await runner.cleanup()
    assert replies[-1][0] == 451 and replies[-1][1].startswith("4.4.2 "), replies
    assert "may have been delivered" in replies[-1][1]


async def test_a_queued_account_is_queued_on_the_zero_share_gateway(start: Start, upstream: Upstream, tmp_path: Path) -> None:
    """The queue comes before forwarding: the message is stored where it arrived, 250 after the commit."""
    queue = OutboxOptions(url=f"sqlite:///{tmp_path}/q.db", owner="gw-a")
    a = await start("gw-a.test", peer_admin_port=_free_port(), queue=queue)
    a.configure(alerts(upstream, peers=[f"http://{HOST}:{_free_port()}"], delivery={"mode": "queue"}))
    replies = await in_thread(send, a)
    assert replies[-1][0] == 250 and " queued as " in replies[-1][1], replies
    queue_id = replies[-1][1].rsplit(" ", 1)[1]
    assert a.gateway.outbox is not None
    stored = await a.gateway.outbox.get(queue_id)
    assert stored is not None and stored.account == "apps/alerts" and stored.sender == SENDER
