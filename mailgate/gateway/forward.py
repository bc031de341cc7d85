"""Forwarding a send request to a peer gateway, for accounts whose connection share here is 0.

When an account's cluster-wide ``maxConnections`` is smaller than the number
of gateway replicas (Office 365 allows 3 sessions; a deployment may run 5
pods), the operator gives some gateways a share of 0 and lists the peers that
hold one (docs/admin-api.md, "Shares"). Such a gateway passes the request on
unchanged, with the caller's ``Authorization``, and returns the peer's answer
unchanged, so the caller cannot tell.

Peers are tried round-robin. Only a failure to *connect* (refused, or timed
out: ``connect_timeout``) moves on to the next peer: once a peer has the request it may have sent the message, and trying
another could send it twice, so a failure after that is "delivery unknown"
(``delivery-unknown``), never "retry". The caller's ``Idempotency-Key``
goes along, so the peer's store guards the send as well as ours. A forwarded
request carries
``X-Mailgate-Forwarded``; a gateway that receives one for an account it would
forward again refuses it instead (a stale peer list must never make a loop).

SMTP messages (``relay``) have no bearer token to pass on: the client logged
in over SMTP, or sends from a trusted network, and this gateway checked that,
the sender and the size. So the relay core's message itself goes to the peer
(``relay_wire``), on the peer's admin API (``relay_api``), with the admin
token every gateway of the deployment holds: the peer trusts this gateway,
as it trusts the operator. Its answer is its relay's outcome, which the SMTP
door answers as a local send. A peer's admin API is at the host of its send
URL (``share.peers``), on the peers' admin port (the gateways of one
Deployment share their ports), over TLS when this gateway's own admin API
uses TLS (``peer_tls`` says whom it trusts). The same rules apply: peers
in turn, the next one only when nothing was taken (no connection, or the peer
refused the call itself: an older gateway without the endpoint, another
admin token), "delivery unknown" once a peer may have sent it, and a peer
that would pass the message on again refuses it (``Relay.deliver``).
"""

from __future__ import annotations

import itertools
import logging
import ssl
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from pydantic import ValidationError
from yarl import URL

from ..logs import request_id_var
from ..relay.envelope import OutgoingMessage
from ..relay.outcomes import RETRY_SHUTTING_DOWN, RETRY_UPSTREAM_DOWN, DeliveryUnknown, Outcome, Reason, RetryLater
from .problems import problem
from .relay_wire import RelayAnswer, RelayRequest

FORWARDED_HEADER = "X-Mailgate-Forwarded"
_PASS_REQUEST = ("Authorization", "Content-Type", "Idempotency-Key")
_PASS_RESPONSE = ("Content-Type", "Retry-After")

RELAY_PATH = "/v1/relay/accounts"  # + /{namespace}/{name}, on the admin API (relay_api.py)
_MAY_HAVE_SENT = "the peer gateway failed after it took the message, before its answer; it may have been delivered"

log = logging.getLogger("mailgate.gateway.forward")


@dataclass(frozen=True)
class PeerAdmin:
    """How this gateway reaches its peers' admin API: the port, TLS, and the admin token every gateway shares."""

    port: int
    token: str = field(repr=False)
    tls: ssl.SSLContext | None = None  # None: plain http

    def relay_url(self, peer: str, key: str) -> URL:
        """The relay endpoint of the peer whose send API is at ``peer``; raises ``ValueError`` for a URL without a host."""
        base = URL(peer)
        if not base.host:
            raise ValueError("no host")
        namespace, _, name = key.partition("/")
        admin = base.with_scheme("https" if self.tls else "http").with_port(self.port).with_path(RELAY_PATH)
        return admin / namespace / name


def peer_tls(anchors: str) -> ssl.SSLContext:
    """Trust for peers' admin APIs: the certificates in ``anchors``, each one a trust anchor.

    ``anchors`` is the CA that issues the gateways' admin certificates
    (``admin_ca_file``, what the operator trusts too), or else this gateway's
    own admin certificate chain: every pod of a Deployment mounts the same
    one, so a peer presenting it (or one issued under a CA in that file) is
    one of us. Only a private CA belongs in either: no host name is checked,
    since peers are addressed by pod IP as the operator addresses them.
    """
    context = ssl.create_default_context(cafile=anchors)
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


class Forwarder:
    """Owns one client session for all peers; ``start``/``close`` run with the app's lifecycle."""

    def __init__(self, *, connect_timeout: float = 5.0, total_timeout: float = 300.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=total_timeout, sock_connect=connect_timeout)
        self._session: aiohttp.ClientSession | None = None
        self._turn = itertools.count()
        self.peer_admin: PeerAdmin | None = None  # set by the gateway once its admin API listens; None: no relaying

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout, auto_decompress=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def forward(self, request: web.Request, body: bytes, peers: list[str], request_id: str) -> web.Response:
        if request.headers.get(FORWARDED_HEADER):
            return problem(
                "peer-unavailable", "this gateway holds no share of the account either", request_id=request_id, retry_after=1
            )
        assert self._session is not None, "Forwarder.start() not called"
        headers = {name: request.headers[name] for name in _PASS_REQUEST if name in request.headers}
        headers["X-Request-Id"] = request_id
        headers[FORWARDED_HEADER] = "1"
        start = next(self._turn)
        for i in range(len(peers)):
            peer = peers[(start + i) % len(peers)].rstrip("/")
            try:
                async with self._session.post(peer + request.path_qs, data=body, headers=headers) as answer:
                    payload = await answer.read()
                    kept = {name: answer.headers[name] for name in _PASS_RESPONSE if name in answer.headers}
                    return web.Response(status=answer.status, body=payload, headers=kept)
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:  # nothing left this gateway
                log.warning("peer %s unreachable, trying the next one: %s", peer, exc)
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("forwarding to peer %s failed after it took the request: %s", peer, type(exc).__name__)
                detail = "the peer gateway failed after it took the request, before its answer; it may have been delivered"
                return problem(Reason.DELIVERY_UNKNOWN.value, detail, request_id=request_id)
        return problem("peer-unavailable", "no peer gateway could be reached", request_id=request_id, retry_after=5)

    async def relay(self, key: str, peers: list[str], message: OutgoingMessage) -> Outcome:
        """Hand an already-checked message to a peer's admin API; the peer's relay outcome, or why there is none."""
        admin, session = self.peer_admin, self._session
        if session is None:
            return RetryLater(Reason.SHUTTING_DOWN, "the gateway is shutting down", RETRY_SHUTTING_DOWN)
        if admin is None:
            text = f"this gateway holds no connection share of account {key} and has no admin API to reach its peers"
            return RetryLater(Reason.PEER_UNAVAILABLE, text, RETRY_UPSTREAM_DOWN)
        body = RelayRequest.of(message).model_dump_json(by_alias=True).encode()
        headers = {"Authorization": f"Bearer {admin.token}", "Content-Type": "application/json"}
        request_id = request_id_var.get()
        if request_id is not None:
            headers["X-Request-Id"] = request_id
        refused = ""
        start = next(self._turn)
        for i in range(len(peers)):
            peer = peers[(start + i) % len(peers)]
            try:
                url = admin.relay_url(peer, key)
            except ValueError:
                log.warning("peer %r is not a URL; trying the next one", peer)
                continue
            try:
                async with session.post(url, data=body, headers=headers, ssl=admin.tls or True) as answer:
                    payload = await answer.read()
                    status = answer.status
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:  # TLS verification too
                log.warning("peer %s unreachable, trying the next one: %s", peer, type(exc).__name__)
                continue
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("relaying to peer %s failed after it took the message: %s", peer, type(exc).__name__)
                return DeliveryUnknown(_MAY_HAVE_SENT)
            if status == 200:
                try:
                    return RelayAnswer.model_validate_json(payload).outcome()
                except ValidationError:
                    log.warning("peer %s answered a relay with an unreadable outcome", peer)
                    return DeliveryUnknown(_MAY_HAVE_SENT)
            if status >= 500:
                log.warning("peer %s failed a relay with HTTP %d", peer, status)
                return DeliveryUnknown(_MAY_HAVE_SENT)
            # 4xx: the peer refused the call itself (an older gateway, another admin token) and took nothing.
            log.warning("peer %s refused a relay with HTTP %d; trying the next one", peer, status)
            refused = f"no peer gateway took the message (a peer refused the relay with HTTP {status})"
        text = refused or "no peer gateway could be reached"
        return RetryLater(Reason.PEER_UNAVAILABLE, text, RETRY_UPSTREAM_DOWN)
