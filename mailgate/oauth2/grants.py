"""OAuth2 grants for upstream SMTP accounts, and the token requests they make (pure: no I/O).

Three ways a gateway gets an access token for XOAUTH2 without a user present:

* ``ClientSecretGrant``: client credentials (RFC 6749 §4.4) with a client
  secret, sent as HTTP Basic (``client_secret_basic``, the default) or in the
  form (``client_secret_post``). Microsoft 365 app registrations, Auth0-style
  providers (``audience``), any generic endpoint.
* ``ClientAssertionGrant``: client credentials authenticated with a JWT signed
  by the app's certificate key (RFC 7523 §2.2, ``private_key_jwt``): Microsoft's
  certificate credential, which never sends a secret over the wire.
* ``JwtBearerGrant``: the assertion itself is the grant (RFC 7523 §2.1): a
  Google service account acting as a mailbox through domain-wide delegation.

Grants are frozen values: equality tells a secret rotation from an unchanged
configuration, and ``repr`` never shows key material or secrets. Nothing here
puts a secret or key into an exception message: ``GrantError`` names the part
that is wrong, never its value.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote_plus, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

CLIENT_CREDENTIALS = "client_credentials"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"
ASSERTION_LIFETIME = 300  # seconds; Microsoft asks for 5-10 minutes at most, Google for at most 60


class GrantError(ValueError):
    """Credential material that cannot work; the message names the part (``privateKey``), never a value."""


@dataclass(frozen=True)
class ClientSecretGrant:
    """Client credentials with a client secret (RFC 6749 §4.4, §2.3.1)."""

    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    scope: str | None = None
    audience: str | None = None  # sent as the form parameter ``audience`` when set (Auth0-style providers)
    method: Literal["basic", "post"] = "basic"


@dataclass(frozen=True)
class ClientAssertionGrant:
    """Client credentials authenticated with a certificate-signed JWT (RFC 7523 §2.2), as Microsoft documents it."""

    token_url: str
    client_id: str
    private_key_pem: str = field(repr=False)
    certificate_pem: str  # the header names it by x5t#S256 and x5t, so the provider knows which registered key to use
    scope: str | None = None
    audience: str | None = None


@dataclass(frozen=True)
class JwtBearerGrant:
    """A signed assertion as the grant (RFC 7523 §2.1): a Google service account acting as ``subject``."""

    token_url: str
    issuer: str  # the service account's client_email
    subject: str  # the mailbox to act as (``sub``)
    private_key_pem: str = field(repr=False)
    key_id: str | None = None  # ``kid`` header: the JSON key's private_key_id, so Google picks the right public key
    scope: str | None = None


Grant = ClientSecretGrant | ClientAssertionGrant | JwtBearerGrant


@dataclass(frozen=True)
class TokenRequest:
    """One POST to a token endpoint; form and headers hold credentials, so they stay out of ``repr``."""

    url: str
    form: dict[str, str] = field(repr=False)
    headers: dict[str, str] = field(repr=False)


def token_request(grant: Grant, now: float) -> TokenRequest:
    """The token request for ``grant`` at ``now`` (``time.time()``); assertions are signed here, valid for 5 minutes.

    Raises ``GrantError`` for key material that cannot sign (``check_grant``
    reports the same earlier, at configuration time).
    """
    headers = {"Accept": "application/json"}
    if isinstance(grant, ClientSecretGrant):
        form = _client_credentials_form(grant.scope, grant.audience)
        if grant.method == "post":
            form.update(client_id=grant.client_id, client_secret=grant.client_secret)
        else:  # RFC 6749 §2.3.1: both parts are form-urlencoded before they are joined and base64-encoded
            pair = f"{quote_plus(grant.client_id)}:{quote_plus(grant.client_secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        return TokenRequest(grant.token_url, form, headers)
    if isinstance(grant, ClientAssertionGrant):
        key, algorithm = _signing_key(grant.private_key_pem, "privateKey")
        der = _certificate(grant.certificate_pem, "certificate").public_bytes(Encoding.DER)
        header = {"x5t#S256": _b64url(hashlib.sha256(der).digest()), "x5t": _b64url(hashlib.sha1(der).digest())}
        claims = {
            "aud": grant.token_url,
            "iss": grant.client_id,
            "sub": grant.client_id,
            "jti": secrets.token_hex(16),
            "nbf": int(now),
            "iat": int(now),
            "exp": int(now) + ASSERTION_LIFETIME,
        }
        form = _client_credentials_form(grant.scope, grant.audience)
        form.update(
            client_id=grant.client_id,
            client_assertion_type=CLIENT_ASSERTION_TYPE,
            client_assertion=jwt.encode(claims, key, algorithm=algorithm, headers=header),
        )
        return TokenRequest(grant.token_url, form, headers)
    key, algorithm = _signing_key(grant.private_key_pem, "privateKey")
    claims = {
        "iss": grant.issuer,
        "sub": grant.subject,
        "aud": grant.token_url,
        "iat": int(now),
        "exp": int(now) + ASSERTION_LIFETIME,
    }
    if grant.scope:
        claims["scope"] = grant.scope
    kid = {"kid": grant.key_id} if grant.key_id else None
    assertion = jwt.encode(claims, key, algorithm=algorithm, headers=kid)
    return TokenRequest(grant.token_url, {"grant_type": JWT_BEARER, "assertion": assertion}, headers)


def google_service_account_grant(key_json: str, subject: str, scope: str, token_url: str | None = None) -> JwtBearerGrant:
    """The grant for a Google service-account JSON key acting as ``subject`` (domain-wide delegation).

    ``token_url`` overrides the key's ``token_uri`` (tests, private endpoints).
    Raises ``GrantError`` naming the missing or broken field, never its value.
    """
    try:
        key = json.loads(key_json)
    except (ValueError, TypeError):
        raise GrantError("serviceAccountKey is not JSON") from None
    if not isinstance(key, dict):
        raise GrantError("serviceAccountKey is not a JSON object")
    if key.get("type") != "service_account":
        raise GrantError("serviceAccountKey: type is not service_account")
    for name in ("client_email", "private_key"):
        if not isinstance(key.get(name), str) or not key[name]:
            raise GrantError(f"serviceAccountKey: missing {name}")
    key_id = key.get("private_key_id")
    grant = JwtBearerGrant(
        token_url=token_url or _optional_str(key, "token_uri") or GOOGLE_TOKEN_URL,
        issuer=key["client_email"],
        subject=subject,
        private_key_pem=key["private_key"],
        key_id=key_id if isinstance(key_id, str) and key_id else None,
        scope=scope,
    )
    _signing_key(grant.private_key_pem, "serviceAccountKey: private_key")
    _require(scope, "scope")
    check_grant(grant)
    return grant


def check_grant(grant: Grant) -> None:
    """Load the grant's key material once, so that a broken PEM fails at configuration time rather than at first use."""
    _check_url(grant.token_url)
    if isinstance(grant, ClientSecretGrant):
        _require(grant.client_id, "clientId")
        _require(grant.client_secret, "clientSecret")
        if grant.method not in ("basic", "post"):
            raise GrantError("client authentication method must be basic or post")
    elif isinstance(grant, ClientAssertionGrant):
        _require(grant.client_id, "clientId")
        key, _ = _signing_key(grant.private_key_pem, "privateKey")
        certificate = _certificate(grant.certificate_pem, "certificate")
        if _spki(certificate.public_key()) != _spki(key.public_key()):
            raise GrantError("certificate does not belong to privateKey")
    else:
        _require(grant.issuer, "issuer")
        _require(grant.subject, "subject")
        _signing_key(grant.private_key_pem, "privateKey")


def _client_credentials_form(scope: str | None, audience: str | None) -> dict[str, str]:
    form = {"grant_type": CLIENT_CREDENTIALS}
    if scope:
        form["scope"] = scope
    if audience:
        form["audience"] = audience
    return form


def _signing_key(pem: str, part: str) -> tuple[rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, str]:
    """The private key and its JWS algorithm: RS256 for RSA, ES256 for EC P-256 (what providers accept)."""
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError, AttributeError):  # TypeError: an encrypted key; its message says nothing secret, ours less
        raise GrantError(f"{part} is not an unencrypted PEM private key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise GrantError(f"{part}: RSA keys need at least 2048 bits")
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key, "ES256"
    raise GrantError(f"{part} must be an RSA or EC P-256 key")


def _certificate(pem: str, part: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem.encode())
    except (ValueError, TypeError, AttributeError):
        raise GrantError(f"{part} is not a PEM certificate") from None


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise GrantError("tokenUrl must be an absolute https:// (or http://) URL")


def _require(value: str, part: str) -> None:
    if not value:
        raise GrantError(f"{part} is empty")


def _optional_str(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    return value if isinstance(value, str) and value else None
