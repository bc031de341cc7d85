"""The HTTP side of OAuth2: POST a grant's token request, turn the answer into a token or a ``TokenError``.

Every failure becomes a ``TokenError`` whose text an operator can act on (it
ends up in an account's status condition) and that never carries a secret:
the endpoint's ``error_description`` is cleaned, shortened and scrubbed of
every credential the request carried (providers do echo parts of requests),
and a successful response is never quoted, because it holds a token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_plus, unquote_plus, urlsplit, urlunsplit

from mailgate.pool.settings import shared_tls_context

from .grants import Grant, TokenRequest, token_request

if TYPE_CHECKING:  # the HTTP client is loaded with the first token request: the relay core imports this module
    import aiohttp

DEFAULT_LIFETIME = 3600.0  # RFC 6749 §5.1 leaves expires_in optional; an hour is what providers issue
_MAX_BODY = 256 * 1024  # token responses are a few KB; more is not a token endpoint
_MAX_DESCRIPTION = 300
_MAX_ERROR_CODE = 64
_REDACTED = "[redacted]"


@dataclass(frozen=True)
class AccessToken:
    """A bearer token and when it stops working; ``repr`` and logs see only its fingerprint."""

    value: str = field(repr=False)
    expires_at: float  # epoch seconds (time.time() based)
    lifetime: float  # expires_in as issued

    def fingerprint(self) -> str:
        """A digest prefix that tells tokens apart in logs and metrics without revealing one."""
        return token_fingerprint(self.value)


def token_fingerprint(value: str) -> str:
    """The same digest as ``AccessToken.fingerprint`` for a raw token (e.g. one an upstream refused)."""
    return hashlib.sha256(value.encode()).hexdigest()[:16]


class TokenError(Exception):
    """A token request that did not yield a token; ``str()`` is secret-free and fit for a status condition.

    ``error`` is the endpoint's RFC 6749 §5.2 code (``invalid_client`` ...) or
    one of ``unreachable``, ``timeout``, ``http_<status>`` (an answer without
    an OAuth error), ``invalid_response``. ``retryable`` tells a passing
    failure from a refusal that only a configuration change fixes.
    """

    def __init__(self, error: str, description: str, *, url: str, status: int | None = None, retryable: bool) -> None:
        self.error = error
        self.description = description
        self.status = status
        self.retryable = retryable
        self.url = url
        super().__init__(self._text())

    def _text(self) -> str:
        detail = f": {self.description}" if self.description else ""
        where = f"token endpoint {self.url}"
        if self.error == "unreachable":
            return f"{where} unreachable{detail}"
        if self.error == "timeout":
            return f"{where} did not answer in time{detail}"
        if self.error == "invalid_response":
            return f"{where} sent an invalid response (HTTP {self.status}){detail}"
        if self.error.startswith("http_"):
            return f"{where} failed (HTTP {self.status}){detail}"
        verb = "failed" if self.retryable else "refused the request"
        return f"{where} {verb} (HTTP {self.status}): {self.error}{detail}"


class TokenEndpoint:
    """HTTP client for token endpoints: one aiohttp session, created lazily in the running loop.

    HTTPS is verified with ``shared_tls_context(ca_pem)``: a private CA (or the
    system store) the same way the account's SMTP server is trusted. Redirects
    are not followed: a token request that moves elsewhere would take its
    credentials along.
    """

    def __init__(self, *, ca_pem: str | None = None, timeout: float = 30.0) -> None:
        self._ca_pem = ca_pem
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=shared_tls_context(self._ca_pem))
            self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=self._timeout))
        return self._session

    async def fetch(self, grant: Grant) -> AccessToken:
        """One token request; ``TokenError`` for anything but an RFC 6749 §5.1 bearer token. ``GrantError`` for bad keys."""
        import aiohttp

        started = time.time()  # the lifetime counts from the request, so the token is never thought valid too long
        request = token_request(grant, started)
        url = public_url(request.url)
        headers = {**request.headers, "Content-Type": "application/x-www-form-urlencoded"}
        try:
            async with self._client().post(request.url, data=request.form, headers=headers, allow_redirects=False) as response:
                status = response.status
                body = await _read_capped(response)
        except TimeoutError:
            raise TokenError("timeout", f"no answer within {self._timeout:g}s", url=url, retryable=True) from None
        except aiohttp.ClientConnectorCertificateError as error:
            description = f"TLS certificate verification failed: {getattr(error.certificate_error, 'verify_message', '')}"
            raise TokenError("unreachable", _clean(description.rstrip(": "), []), url=url, retryable=True) from None
        except aiohttp.ClientConnectorError as error:
            raise TokenError("unreachable", _clean(str(error), []), url=url, retryable=True) from None
        except (aiohttp.ClientError, OSError) as error:
            raise TokenError("unreachable", type(error).__name__, url=url, retryable=True) from None
        payload = _json(body)
        if isinstance(payload, dict) and isinstance(payload.get("error"), str) and "access_token" not in payload:
            raise _refusal(payload, status, url, _secrets(request))
        if status != 200:
            if 300 <= status < 400:
                kind = "a redirect, which is not followed (configure the final token URL)"
            else:
                kind = "non-JSON answer" if payload is None else "answer without an OAuth error"
            retryable = status >= 500 or status == 429
            raise TokenError(f"http_{status}", kind, url=url, status=status, retryable=retryable)
        return _access_token(payload, started, url)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class TokenEndpoints:
    """One ``TokenEndpoint`` per CA bundle in use: accounts that trust the same CAs share its HTTP session."""

    def __init__(self) -> None:
        self._by_ca: dict[str | None, TokenEndpoint] = {}

    def for_ca(self, ca_pem: str | None) -> TokenEndpoint:
        endpoint = self._by_ca.get(ca_pem)
        if endpoint is None:
            endpoint = self._by_ca[ca_pem] = TokenEndpoint(ca_pem=ca_pem)
        return endpoint

    async def close(self) -> None:
        endpoints, self._by_ca = list(self._by_ca.values()), {}
        for endpoint in endpoints:
            await endpoint.close()


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    body = bytearray()
    async for chunk in response.content.iter_chunked(16384):
        body += chunk
        if len(body) > _MAX_BODY:
            break
    return bytes(body)


def _json(body: bytes) -> Any:
    """The parsed body, whatever its Content-Type says (providers disagree); None if it is not JSON."""
    try:
        return json.loads(body)
    except ValueError:
        return None


def _refusal(payload: dict[str, Any], status: int, url: str, secrets: list[str]) -> TokenError:
    description = payload.get("error_description")
    retryable = status >= 500 or status == 429
    return TokenError(
        _clean(payload["error"], secrets)[:_MAX_ERROR_CODE] or "unknown_error",
        _clean(description, secrets) if isinstance(description, str) else "",
        url=url,
        status=status,
        retryable=retryable,
    )


def _access_token(payload: Any, started: float, url: str) -> AccessToken:
    """RFC 6749 §5.1; the failure text describes what is wrong, never what was sent (it would be the token)."""

    def invalid(what: str) -> TokenError:
        return TokenError("invalid_response", what, url=url, status=200, retryable=True)

    if not isinstance(payload, dict):
        raise invalid("not a JSON object")
    value = payload.get("access_token")
    if not isinstance(value, str) or not value:
        raise invalid("no access_token")
    token_type = payload.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise invalid("token_type is not Bearer")
    lifetime = _lifetime(payload.get("expires_in", DEFAULT_LIFETIME))
    if lifetime is None:
        raise invalid("expires_in is not a positive number of seconds")
    return AccessToken(value=value, expires_at=started + lifetime, lifetime=lifetime)


def _lifetime(raw: Any) -> float | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, str):
        try:
            raw = float(raw)
        except ValueError:
            return None
    if not isinstance(raw, int | float) or not math.isfinite(raw) or raw <= 0:
        return None
    return float(raw)


def _secrets(request: TokenRequest) -> list[str]:
    """Every credential the request carried, in the forms an endpoint might echo it back."""
    found: list[str] = []
    for name in ("client_secret", "client_assertion", "assertion"):
        value = request.form.get(name)
        if value:
            found += [value, quote_plus(value)]
            if name != "client_secret":
                found.append(value.rpartition(".")[2])  # a JWT's signature is what makes it usable
    authorization = request.headers.get("Authorization", "")
    if authorization.startswith("Basic "):
        encoded = authorization.removeprefix("Basic ")
        quoted = base64.b64decode(encoded).decode().partition(":")[2]
        found += [encoded, quoted, unquote_plus(quoted)]
    return sorted({value for value in found if value}, key=len, reverse=True)  # longest first: no partial leftovers


def _clean(text: str, secrets: list[str]) -> str:
    """Control characters out (a description may span lines or try to forge a log line), secrets out, then shortened."""
    for secret in secrets:
        text = text.replace(secret, _REDACTED)
    text = "".join(" " if unicodedata.category(char).startswith("C") else char for char in text)
    text = " ".join(text.split())
    for secret in secrets:  # again: a secret split by a control character is whole now
        text = text.replace(secret, _REDACTED)
    return text if len(text) <= _MAX_DESCRIPTION else text[: _MAX_DESCRIPTION - 1].rstrip() + "…"


def public_url(url: str) -> str:
    """The URL without query, fragment or user info: what may be shown in messages."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))
