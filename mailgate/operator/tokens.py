"""The operator's OAuth2 tokens: one keeper per account, the long-lived credential never leaves this process.

In a cluster the operator is the only part that reads the client secret,
private key or service-account key (from the account's Secret). It obtains
access tokens, one request per account for the whole cluster, and the engine
pushes each new token, with its expiry, to the gateways like any other
configuration change. A gateway whose upstream refuses a token (535) asks
for a new one through ``POST /v1/token-refresh`` (``refresh_api``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from ..oauth2.config import grant_for
from ..oauth2.endpoint import AccessToken, TokenEndpoints, TokenError
from ..oauth2.keeper import TokenKeeper, TokenObserver, TokenUnavailable
from ..spec import OAuth2Spec

log = logging.getLogger(__name__)

REFRESH_TIMEOUT = 20.0


class OperatorTokens:
    """Token keepers by account key; forwards what they report to ``observers``."""

    def __init__(self, observers: list[TokenObserver] | None = None) -> None:
        self.observers: list[TokenObserver] = list(observers or [])
        self._keepers: dict[str, TokenKeeper] = {}
        self._trust: dict[str, str | None] = {}  # account key -> the CA its keeper's endpoint trusts
        self._endpoints = TokenEndpoints()

    def configure(self, key: str, oauth2: OAuth2Spec, secret: Mapping[str, str]) -> None:
        """Start (or re-point after a rotation) the keeper of ``key``; GrantError for a broken credential."""
        grant = grant_for(oauth2, secret)
        keeper = self._keepers.get(key)
        if keeper is not None and self._trust.get(key) == oauth2.ca_certificate:
            keeper.replace_grant(grant)  # the current token serves until the new credential's arrives
            return
        if keeper is not None:
            self.discard_soon(key)
        keeper = self._keepers[key] = TokenKeeper(key, grant, self._endpoints.for_ca(oauth2.ca_certificate), observer=self)
        self._trust[key] = oauth2.ca_certificate
        keeper.start()

    def current(self, key: str) -> AccessToken | None:
        keeper = self._keepers.get(key)
        return keeper.current if keeper is not None else None

    def last_error(self, key: str) -> TokenError | None:
        keeper = self._keepers.get(key)
        return keeper.last_error if keeper is not None else None

    def expiries(self) -> dict[str, float | None]:
        return {key: keeper.expires_at for key, keeper in self._keepers.items()}

    async def refresh(self, key: str, rejected_fingerprint: str) -> bool:
        """A gateway's upstream refused the token with this fingerprint: renew it (once) if it is still current."""
        keeper = self._keepers.get(key)
        if keeper is None:
            return False
        current = keeper.current
        if current is None or current.fingerprint() != rejected_fingerprint:
            return True  # a newer token is out (or on its way) already
        try:
            await keeper.renewed(current.value, REFRESH_TIMEOUT)
        except TokenUnavailable:
            return False
        return True

    def discard_soon(self, key: str) -> None:
        keeper = self._keepers.pop(key, None)
        self._trust.pop(key, None)
        if keeper is not None:
            keeper.close_soon()

    async def close(self) -> None:
        keepers, self._keepers = list(self._keepers.values()), {}
        for keeper in keepers:
            await keeper.close()
        await self._endpoints.close()

    # TokenObserver, for the keepers
    def token_issued(self, key: str, token: AccessToken) -> None:
        for observer in self.observers:
            observer.token_issued(key, token)

    def token_failed(self, key: str, error: TokenError, retry_in: float) -> None:
        for observer in self.observers:
            observer.token_failed(key, error, retry_in)
