"""Forwarding a send request to a peer gateway, for accounts whose connection share here is 0.

When an account's cluster-wide ``maxConnections`` is smaller than the number
of gateway replicas (Office 365 allows 3 sessions; a deployment may run 5
pods), the operator gives some gateways a share of 0 and lists the peers that
hold one (docs/admin-api.md, "Shares"). Such a gateway passes the request on
unchanged, with the caller's ``Authorization``, and returns the peer's answer
unchanged, so the caller cannot tell.

Peers are tried round-robin. Only a failure to *connect* moves on to the next
peer: once a peer has the request it may have sent the message, and trying
another could send it twice, so a failure after that is "delivery unknown"
(``delivery-unknown``), never "retry". The caller's ``Idempotency-Key``
goes along, so the peer's store guards the send as well as ours. A forwarded
request carries
``X-Mailgate-Forwarded``; a gateway that receives one for an account it would
forward again refuses it instead (a stale peer list must never make a loop).
"""

from __future__ import annotations

import itertools
import logging

import aiohttp
from aiohttp import web

from .problems import problem
from .relay import Reason

FORWARDED_HEADER = "X-Mailgate-Forwarded"
_PASS_REQUEST = ("Authorization", "Content-Type", "Idempotency-Key")
_PASS_RESPONSE = ("Content-Type", "Retry-After")

log = logging.getLogger("mailgate.gateway.forward")


class Forwarder:
    """Owns one client session for all peers; ``start``/``close`` run with the app's lifecycle."""

    def __init__(self, *, connect_timeout: float = 5.0, total_timeout: float = 300.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=total_timeout, sock_connect=connect_timeout)
        self._session: aiohttp.ClientSession | None = None
        self._turn = itertools.count()

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
            except aiohttp.ClientConnectorError as exc:
                log.warning("peer %s unreachable, trying the next one: %s", peer, exc.os_error)
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("forwarding to peer %s failed after it took the request: %s", peer, type(exc).__name__)
                detail = "the peer gateway failed after it took the request, before its answer; it may have been delivered"
                return problem(Reason.DELIVERY_UNKNOWN.value, detail, request_id=request_id)
        return problem("peer-unavailable", "no peer gateway could be reached", request_id=request_id, retry_after=5)
