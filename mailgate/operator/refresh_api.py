"""``POST /v1/token-refresh``: a gateway tells the operator that its upstream refused an access token.

The gateway sends the account and the token's fingerprint (a digest, never
the token), authenticated with the admin token it already shares with the
operator. The operator renews the token only if that fingerprint is still the
current one, so any number of gateways reporting the same refusal cause one
token request, and the new token reaches every gateway by the usual push. The
answer carries nothing but a status: a caller learns no token from it.

Served beside ``/metrics`` on the operator's metrics port; the pushes tell
gateways the URL (``credentials.tokenRefreshUrl``). A standby replica answers
503 until it leads.
"""

from __future__ import annotations

import hmac
import re
from http import HTTPStatus
from typing import Protocol

from aiohttp import web

PATH = "/v1/token-refresh"
_FINGERPRINT = re.compile(r"^[0-9a-f]{8,64}$")
_PROBLEM = "application/problem+json"


class TokenRefresher(Protocol):
    async def refresh_token(self, key: str, rejected_fingerprint: str) -> bool: ...


class TokenRefreshAPI:
    """The route; ``refresher`` is the engine while this replica leads, else None."""

    def __init__(self, admin_token: str) -> None:
        self._admin_token = admin_token.encode()
        self.refresher: TokenRefresher | None = None

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(PATH, self._handle)

    async def _handle(self, request: web.Request) -> web.Response:
        offered = request.headers.get("Authorization", "").removeprefix("Bearer ").encode()
        if not hmac.compare_digest(offered, self._admin_token):
            return _problem(401, "a valid admin bearer token is required", {"WWW-Authenticate": "Bearer"})
        if self.refresher is None:
            return _problem(503, "this operator replica is not the leader")
        try:
            body = await request.json()
        except ValueError:
            return _problem(400, "the body must be JSON")
        if not isinstance(body, dict):
            return _problem(400, "the body must be a JSON object")
        namespace, name, rejected = body.get("namespace"), body.get("name"), body.get("rejectedToken")
        if not all(isinstance(value, str) and value for value in (namespace, name, rejected)):
            return _problem(400, "namespace, name and rejectedToken (a token fingerprint) are required strings")
        assert isinstance(rejected, str)
        if not _FINGERPRINT.match(rejected):
            return _problem(400, "rejectedToken must be a token fingerprint (hex), never a token")
        if not await self.refresher.refresh_token(f"{namespace}/{name}", rejected):
            return _problem(503, "no new token could be obtained for this account now")
        return web.Response(status=204)


def _problem(status: int, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(
        {"title": HTTPStatus(status).phrase, "status": status, "detail": detail},
        status=status,
        content_type=_PROBLEM,
        headers=headers,
    )
