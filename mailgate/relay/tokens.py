"""OAuth2 access tokens for the pool: obtained here (standalone) or pushed by the operator (in a cluster).

Which one is decided by what the account's configuration carries: the
long-lived credential (``credentials.oauth2Secret``, only ever loaded from a
file in standalone mode) makes this gateway run a ``TokenKeeper``; an access
token (``credentials.token`` with ``tokenExpiresAt``) is one the operator
obtained, and the gateway only holds it. Either way the pool sees one
``TokenSource`` per account that lives as long as the account, so a new token
never changes the session identity and never drains a session.

Changes are prepared while a push is built and committed only when it is
applied, so a refused push starts no token request and replaces no token.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..oauth2.config import grant_for, secret_keys
from ..oauth2.endpoint import TokenEndpoints, token_fingerprint
from ..oauth2.grants import Grant, GrantError
from ..oauth2.keeper import TokenKeeper, TokenObserver, TokenUnavailable
from ..snapshot import AccountConfig

if TYPE_CHECKING:  # loaded with the first refresh request: the relay core imports this module
    import aiohttp

log = logging.getLogger(__name__)

REFRESH_REQUEST_TIMEOUT = 10.0


class PushedTokens:
    """A token source fed by the operator's pushes; after a 535 it asks the operator for a new token."""

    def __init__(self, key: str, ask_operator: Callable[[str, str, str], Awaitable[None]] | None = None) -> None:
        self.key = key
        self._token: str | None = None
        self._expires_at = 0.0
        self._refresh_url: str | None = None
        self._ask_operator = ask_operator
        self._changed = asyncio.Event()

    @property
    def expires_at(self) -> float | None:
        return self._expires_at if self._token is not None else None

    def update(self, token: str | None, expires_at: float | None, refresh_url: str | None) -> None:
        self._refresh_url = refresh_url
        if token is not None and token != self._token:
            self._token, self._expires_at = token, expires_at if expires_at is not None else float("inf")
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    def _valid(self) -> str | None:
        return self._token if self._token is not None and time.time() < self._expires_at else None

    async def token(self, timeout: float) -> str:
        return await self._wait(lambda token: True, timeout)

    async def renewed(self, rejected: str, timeout: float) -> str:
        current = self._valid()
        if current is not None and current != rejected:
            return current
        if self._refresh_url is not None and self._ask_operator is not None:
            await self._ask_operator(self._refresh_url, self.key, token_fingerprint(rejected))
        return await self._wait(lambda token: token != rejected, timeout)

    async def _wait(self, wanted: Callable[[str], bool], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            current = self._valid()
            if current is not None and wanted(current):
                return current
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TokenUnavailable(f"no valid OAuth2 access token for {self.key} from the operator yet", None)
            changed = self._changed
            try:
                async with asyncio.timeout(remaining):
                    await changed.wait()
            except TimeoutError:
                pass


@dataclass(frozen=True)
class PreparedToken:
    """What a push changes for one account's tokens, applied by ``TokenSources.commit``."""

    source: TokenKeeper | PushedTokens
    grant: Grant | None = None
    token: str | None = None
    expires_at: float | None = None
    refresh_url: str | None = None


class TokenSources:
    """The token source of every OAuth2 account of this gateway."""

    def __init__(self, *, observer: TokenObserver | None = None, operator_token: str | None = None) -> None:
        self.observer = observer  # set before the first account arrives (the metrics are built after the registry)
        self._operator_token = operator_token
        self._sources: dict[str, TokenKeeper | PushedTokens] = {}
        self._endpoints = TokenEndpoints()
        self._session: aiohttp.ClientSession | None = None

    def expiries(self) -> dict[str, float | None]:
        """When each account's current token expires, for the remaining-lifetime metric."""
        result: dict[str, float | None] = {}
        for key, source in self._sources.items():
            result[key] = source.expires_at
        return result

    def prepare(self, config: AccountConfig) -> PreparedToken:
        """The source for an OAuth2 account (the one it has, when of the same kind); GrantError for a broken key."""
        oauth2 = config.spec.auth.oauth2
        assert oauth2 is not None
        creds = config.credentials
        existing = self._sources.get(config.key)
        if creds.oauth2_secret is not None:
            secret = {key: value.get_secret_value() for key, value in creds.oauth2_secret.items()}
            missing = [key for key in secret_keys(config.spec.auth) if key not in secret]
            if missing:
                raise GrantError(f"the credential has no {missing[0]} key")
            grant = grant_for(oauth2, secret)
            if isinstance(existing, TokenKeeper):
                return PreparedToken(existing, grant=grant)
            endpoint = self._endpoints.for_ca(oauth2.ca_certificate)
            return PreparedToken(TokenKeeper(config.key, grant, endpoint, observer=self.observer), grant=grant)
        if creds.token is None:
            raise GrantError("neither an access token nor the credential to obtain one was delivered")
        source = existing if isinstance(existing, PushedTokens) else PushedTokens(config.key, self._post_refresh)
        return PreparedToken(source, token=creds.token.get_secret_value(), expires_at=creds.token_expires_at,
                             refresh_url=creds.token_refresh_url)  # fmt: skip

    def commit(self, key: str, prepared: PreparedToken) -> None:
        old = self._sources.get(key)
        if old is not None and old is not prepared.source:
            self._close_soon(old)
        self._sources[key] = prepared.source
        if isinstance(prepared.source, TokenKeeper):
            assert prepared.grant is not None
            if old is prepared.source:
                prepared.source.replace_grant(prepared.grant)
            else:
                prepared.source.start()
        else:
            prepared.source.update(prepared.token, prepared.expires_at, prepared.refresh_url)

    def discard(self, key: str) -> None:
        source = self._sources.pop(key, None)
        if source is not None:
            self._close_soon(source)

    def _close_soon(self, source: TokenKeeper | PushedTokens) -> None:
        if isinstance(source, TokenKeeper):
            source.close_soon()

    async def _post_refresh(self, url: str, key: str, rejected: str) -> None:
        """Tell the operator the upstream refused a token; failures are logged (the caller then waits, bounded)."""
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REFRESH_REQUEST_TIMEOUT))
        namespace, name = key.split("/", 1)
        headers = {"Authorization": f"Bearer {self._operator_token}"} if self._operator_token else {}
        body = {"namespace": namespace, "name": name, "rejectedToken": rejected}
        try:
            async with self._session.post(url, json=body, headers=headers) as response:
                if response.status >= 300:
                    log.warning("asking the operator for a new token for %s: HTTP %s", key, response.status)
        except (aiohttp.ClientError, TimeoutError) as error:
            log.warning("asking the operator for a new token for %s failed: %s", key, type(error).__name__)

    async def close(self) -> None:
        sources, self._sources = list(self._sources.values()), {}
        await asyncio.gather(*(source.close() for source in sources if isinstance(source, TokenKeeper)))
        await self._endpoints.close()
        if self._session is not None:
            await self._session.close()
            self._session = None
