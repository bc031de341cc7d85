"""A real OAuth2 token endpoint for tests, shaped like Microsoft Entra ID and Google's token endpoint.

``TokenServer`` is an aiohttp server on 127.0.0.1 (HTTP, or HTTPS with a
context the test passes in) that really verifies what it is sent: client
secrets (Basic or form, constant-time), certificate-signed client assertions
(signature, audience, times, ``iss``/``sub``, the ``x5t#S256`` thumbprint) and
service-account JWT-bearer assertions (signature, audience, issuer, ``sub``,
``scope``). It refuses with the error codes and descriptions real providers
use, issues random bearer tokens, and answers ``is_valid(mailbox, token)`` for
a test SMTP upstream's XOAUTH2 check (``Upstream(token_check=server.is_valid)``).

Like ``tests.smtp_servers.Upstream`` it runs in its own thread and event loop,
so a test that blocks (a subprocess wait, a sync helper) never stalls it, and
one server can serve gateways in the test's loop and in other processes alike.
Knobs (``lifetime``, ``down``, ``stall``, ``respond_with``) are flipped at run
time; ``requests`` records what the server saw, without any secret.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import json
import math
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal
from urllib.parse import unquote_plus

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import NameOID

CLIENT_CREDENTIALS = "client_credentials"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
XOAUTH2_SCOPE_GOOGLE = "https://mail.google.com/"
XOAUTH2_SCOPE_MICROSOFT = "https://outlook.office365.com/.default"

AADSTS7000215 = (
    "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret "
    "value, not the client secret ID, for a secret added to app '{client_id}'."
)
_ALGORITHMS = ["RS256", "PS256", "ES256"]  # what providers verify; never HS*: a public key is no HMAC secret


Outcome = Literal["issued", "refused", "down", "scripted"]


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it; no secret, assertion or token is kept."""

    path: str
    grant_type: str | None
    client: str | None  # client_id (client credentials) or issuer (JWT bearer)
    auth: Literal["basic", "post", "assertion", "jwt-bearer"] | None
    subject: str | None
    scope: str | None
    outcome: Outcome
    status: int
    error: str | None = None


@dataclass
class _Client:
    client_id: str
    secret: str | None
    public_key: PublicKeyTypes | None
    x5t_s256: str | None
    x5t: str | None
    mailboxes: set[str]


@dataclass
class _ServiceAccount:
    client_email: str
    public_key: PublicKeyTypes
    key_id: str | None


@dataclass
class _Issued:
    token: str
    client: str
    subject: str | None  # JWT bearer: the mailbox it acts as; client credentials: None (the client's mailboxes decide)
    expires: float  # time.monotonic()
    revoked: bool = False


class _Refusal(Exception):
    def __init__(self, status: int, error: str, description: str, code: int | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.description = description
        self.code = code

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.error, "error_description": self.description}
        if self.code is not None:  # Microsoft's shape; Google's has just the two fields
            body.update(error_codes=[self.code], trace_id=secrets.token_hex(8), correlation_id=secrets.token_hex(8))
        return body


@dataclass
class _Attempt:
    """What a request turned out to be, filled in as it is checked (for ``RequestRecord``)."""

    grant_type: str | None = None
    client: str | None = None
    auth: Literal["basic", "post", "assertion", "jwt-bearer"] | None = None
    subject: str | None = None
    scope: str | None = None


class TokenServer:
    """A token endpoint on 127.0.0.1 serving every path that ends in ``/token`` (see the module docstring)."""

    def __init__(self, *, lifetime: float = 3600.0, ssl_context: ssl.SSLContext | None = None) -> None:
        self.lifetime = lifetime  # of tokens issued from now on; ``expires_in`` is it rounded up to whole seconds
        self.down = False  # answer 503 with an HTML body, as a provider's front end does
        self.requests: list[RequestRecord] = []  # answered requests, oldest first
        self.held_requests = 0  # requests that ``stall`` holds right now
        self.base_url = ""
        self._ssl = ssl_context
        self._lock = threading.Lock()
        self._clients: dict[str, _Client] = {}
        self._accounts: dict[str, _ServiceAccount] = {}
        self._tokens: dict[str, _Issued] = {}
        self._script: tuple[int, str, str, dict[str, str]] | None = None
        self._stall = False
        self._unstalled: asyncio.Event | None = None  # the server loop's; set while requests are answered
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------------

    async def start(self) -> TokenServer:
        await asyncio.to_thread(self.start_sync)
        return self

    async def stop(self) -> None:
        await asyncio.to_thread(self.stop_sync)

    async def __aenter__(self) -> TokenServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __enter__(self) -> TokenServer:
        return self.start_sync()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop_sync()

    def start_sync(self) -> TokenServer:
        """Start the server thread and wait until it listens (for sync tests; ``start`` is the async form)."""
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, args=(loop,), name="token-server", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._open(), loop).result(10)
        return self

    def stop_sync(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._stall = False
        self._in_loop(self._release)  # stalled requests get their answers, so the runner's cleanup need not wait
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = self._thread = self._runner = None

    @staticmethod
    def _serve(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _open(self) -> None:
        app = web.Application()
        app.router.add_post("/{path:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self._ssl)
        await site.start()
        self._runner = runner
        self._unstalled = asyncio.Event()
        self._unstalled.set()
        port = runner.addresses[0][1]
        self.base_url = f"{'https' if self._ssl else 'http'}://127.0.0.1:{port}"

    @property
    def stall(self) -> bool:
        """While True, take requests in and answer none of them (until cleared): the client's timeout."""
        return self._stall

    @stall.setter
    def stall(self, value: bool) -> None:
        self._stall = value
        self._in_loop(self._hold if value else self._release)

    def _hold(self) -> None:
        if self._unstalled is not None:
            self._unstalled.clear()

    def _release(self) -> None:
        if self._unstalled is not None:
            self._unstalled.set()

    def _in_loop(self, action: Callable[[], None]) -> None:
        """Run ``action`` in the server's loop (asyncio objects are not thread-safe) and wait until it ran."""
        loop = self._loop
        if loop is None:
            return
        done = threading.Event()

        def run() -> None:
            action()
            done.set()

        loop.call_soon_threadsafe(run)
        assert done.wait(5), "the token server's loop did not answer"

    # -- configuration (the provider's side) -------------------------------------------------------------------

    def token_url(self, tenant: str = "tenant") -> str:
        """A Microsoft-shaped token URL; any path ending in ``/token`` is served the same way."""
        return f"{self.base_url}/{tenant}/oauth2/v2.0/token"

    def add_client(
        self, client_id: str, *, secret: str | None = None, certificate_pem: str | None = None, mailboxes: Iterable[str] = ()
    ) -> None:
        """Register a confidential client (an app registration) allowed to send as ``mailboxes``; replaces one of that id."""
        public_key = x5t_s256 = x5t = None
        if certificate_pem is not None:
            certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
            der = certificate.public_bytes(serialization.Encoding.DER)
            public_key = certificate.public_key()
            x5t_s256, x5t = _b64url(hashlib.sha256(der).digest()), _b64url(hashlib.sha1(der).digest())
        client = _Client(client_id, secret, public_key, x5t_s256, x5t, {_mailbox(m) for m in mailboxes})
        with self._lock:
            self._clients[client_id] = client

    def set_client_secret(self, client_id: str, secret: str) -> None:
        """Rotate the client's secret at the provider: the old one stops working at once."""
        with self._lock:
            self._clients[client_id].secret = secret

    def allow_mailboxes(self, client_id: str, mailboxes: Iterable[str]) -> None:
        """Grant the client the right to send as more mailboxes (Exchange's application access policy)."""
        with self._lock:
            self._clients[client_id].mailboxes.update(_mailbox(m) for m in mailboxes)

    def add_service_account(self, client_email: str, public_key_pem_or_cert: str, key_id: str | None = None) -> None:
        """Register a JWT-bearer issuer with domain-wide delegation: any ``sub`` mailbox is allowed."""
        text = public_key_pem_or_cert.encode()
        public_key: PublicKeyTypes
        if b"BEGIN CERTIFICATE" in text:
            public_key = x509.load_pem_x509_certificate(text).public_key()
        else:
            public_key = serialization.load_pem_public_key(text)
        with self._lock:
            self._accounts[client_email] = _ServiceAccount(client_email, public_key, key_id)

    def respond_with(
        self,
        status: int,
        body: str | dict[str, Any],
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer every request with exactly this until ``respond_normally`` (a misbehaving or odd provider)."""
        text = json.dumps(body) if isinstance(body, dict) else body
        self._script = (status, text, content_type, dict(headers or {}))

    def respond_normally(self) -> None:
        self._script = None

    # -- what the server issued ----------------------------------------------------------------------------------

    def issued(self, for_: str | None = None) -> list[str]:
        """Tokens issued so far, oldest first; ``for_`` keeps those of one client id, issuer or subject mailbox."""
        with self._lock:
            return [issued.token for issued in self._tokens.values() if for_ is None or for_ in (issued.client, issued.subject)]

    def revoke(self, token: str) -> None:
        with self._lock:
            self._tokens[token].revoked = True

    def is_valid(self, mailbox: str, token: str) -> bool:
        """Issued here, unexpired, not revoked, and allowed to act as ``mailbox``. Thread-safe (SMTP servers call it)."""
        with self._lock:
            issued = self._tokens.get(token)
            if issued is None or issued.revoked or time.monotonic() >= issued.expires:
                return False
            if issued.subject is not None:
                return _mailbox(issued.subject) == _mailbox(mailbox)
            client = self._clients.get(issued.client)
            return client is not None and _mailbox(mailbox) in client.mailboxes

    def count(self, outcome: str | None = None) -> int:
        """How many requests were seen (with that outcome)."""
        return sum(1 for record in list(self.requests) if outcome is None or record.outcome == outcome)

    # -- the endpoint ------------------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        if not request.path.endswith("/token"):
            return web.Response(status=404, text="not found")
        if self._unstalled is not None and not self._unstalled.is_set():
            self.held_requests += 1
            try:
                await self._unstalled.wait()
            finally:
                self.held_requests -= 1
        attempt = _Attempt()
        if self.down:
            return self._answer(request, attempt, "down", web.Response(status=503, text=_DOWN_PAGE, content_type="text/html"))
        script = self._script
        if script is not None:
            status, text, content_type, headers = script
            response = web.Response(status=status, text=text, content_type=content_type, headers=headers)
            return self._answer(request, attempt, "scripted", response)
        form = {name: value for name, value in (await request.post()).items() if isinstance(value, str)}
        token_url = self.base_url + request.path  # the audience an assertion must name
        attempt.grant_type = form.get("grant_type")
        attempt.scope = form.get("scope")
        try:
            if attempt.grant_type == CLIENT_CREDENTIALS:
                self._client_credentials(request, form, token_url, attempt)
            elif attempt.grant_type == JWT_BEARER:
                self._jwt_bearer(form, token_url, attempt)
            elif attempt.grant_type is None:
                raise _Refusal(
                    400,
                    "invalid_request",
                    "AADSTS900144: The request body must contain the following parameter: 'grant_type'.",
                    900144,
                )
            else:
                raise _Refusal(400, "unsupported_grant_type", "AADSTS70003: The app requested an unsupported grant type.", 70003)
        except _Refusal as refusal:
            response = web.json_response(refusal.body(), status=refusal.status, headers=_NO_STORE)
            return self._answer(request, attempt, "refused", response, refusal.error)
        assert attempt.client is not None
        expires_in = math.ceil(self.lifetime)
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = _Issued(token, attempt.client, attempt.subject, time.monotonic() + expires_in)
        body = {"token_type": "Bearer", "expires_in": expires_in, "access_token": token}
        return self._answer(request, attempt, "issued", web.json_response(body, headers=_NO_STORE))

    def _answer(
        self, request: web.Request, attempt: _Attempt, outcome: Outcome, response: web.Response, error: str | None = None
    ) -> web.Response:
        record = RequestRecord(
            request.path, attempt.grant_type, attempt.client, attempt.auth, attempt.subject, attempt.scope, outcome,
            response.status, error,
        )  # fmt: skip
        self.requests.append(record)
        return response

    def _client_credentials(self, request: web.Request, form: dict[str, str], token_url: str, attempt: _Attempt) -> None:
        header = request.headers.get("Authorization", "")
        methods = [header.startswith("Basic "), "client_secret" in form, "client_assertion" in form]
        if sum(methods) > 1:
            raise _Refusal(400, "invalid_request", "AADSTS90014: Only one client authentication method may be used.", 90014)
        if methods[0]:
            attempt.auth = "basic"
            try:
                pair = base64.b64decode(header.removeprefix("Basic "), validate=True).decode()
            except ValueError:
                raise _Refusal(400, "invalid_request", "AADSTS90014: Malformed Basic authorization header.", 90014) from None
            quoted_id, colon, quoted_secret = pair.partition(":")
            if not colon:
                raise _Refusal(400, "invalid_request", "AADSTS90014: Malformed Basic authorization header.", 90014)
            attempt.client = unquote_plus(quoted_id)
            if form.get("client_id", attempt.client) != attempt.client:
                raise _Refusal(400, "invalid_request", "AADSTS90014: client_id does not match the Authorization header.", 90014)
            self._check_secret(attempt.client, unquote_plus(quoted_secret))
        elif methods[1]:
            attempt.auth = "post"
            attempt.client = form.get("client_id")
            if not attempt.client:
                raise _Refusal(
                    400, "invalid_request", "AADSTS900144: The request body must contain the parameter: 'client_id'.", 900144
                )
            self._check_secret(attempt.client, form["client_secret"])
        elif methods[2]:
            attempt.auth = "assertion"
            if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
                raise _Refusal(400, "invalid_request", "AADSTS50027: Invalid client_assertion_type.", 50027)
            attempt.client = self._check_client_assertion(form["client_assertion"], token_url, form.get("client_id"))
        else:
            raise _Refusal(401, "invalid_client", _AADSTS7000216, 7000216)

    def _client(self, client_id: str) -> _Client:
        with self._lock:
            client = self._clients.get(client_id)
        if client is None:
            raise _Refusal(
                400,
                "invalid_client",
                f"AADSTS700016: Application with identifier '{client_id}' was not found in the directory 'tenant'. "
                "This can happen if the application has not been installed by the administrator of the tenant.",
                700016,
            )
        return client

    def _check_secret(self, client_id: str, secret: str) -> None:
        client = self._client(client_id)
        expected = client.secret
        if expected is None or not hmac.compare_digest(secret.encode(), expected.encode()):
            raise _Refusal(401, "invalid_client", AADSTS7000215.format(client_id=client_id), 7000215)

    def _check_client_assertion(self, assertion: str, token_url: str, form_client_id: str | None) -> str:
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise _Refusal(401, "invalid_client", "AADSTS50027: JWT token is invalid or malformed.", 50027) from None
        client_id = unverified.get("iss")
        if not isinstance(client_id, str):
            raise _Refusal(401, "invalid_client", "AADSTS50027: Invalid JWT token. The token has no 'iss' claim.", 50027)
        client = self._client(client_id)
        if form_client_id is not None and form_client_id != client_id:
            raise _Refusal(
                401,
                "invalid_client",
                "AADSTS700021: Client assertion application identifier doesn't match 'client_id' parameter.",
                700021,
            )
        thumbprint_matches = (
            header.get("x5t#S256") == client.x5t_s256 if "x5t#S256" in header else header.get("x5t", None) == client.x5t
        )
        if client.public_key is None or client.x5t_s256 is None or not thumbprint_matches:
            raise _Refusal(
                401, "invalid_client",
                "AADSTS700027: The certificate with the identifier used to sign the client assertion is not registered "
                "on application.",
                700027,
            )  # fmt: skip
        try:
            claims = jwt.decode(
                assertion, client.public_key, algorithms=_ALGORITHMS, audience=token_url,  # type: ignore[arg-type]
                options={"require": ["aud", "exp", "nbf", "iat", "iss", "sub", "jti"]},
            )  # fmt: skip
        except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError):
            raise _Refusal(
                401, "invalid_client", "AADSTS700024: Client assertion is not within its valid time range.", 700024
            ) from None
        except jwt.InvalidAudienceError:
            raise _Refusal(
                401, "invalid_client", f"AADSTS700212: Client assertion audience is not {token_url}.", 700212
            ) from None
        except jwt.MissingRequiredClaimError as error:
            raise _Refusal(
                401, "invalid_client", f"AADSTS50027: Invalid JWT token. The token has no '{error.claim}' claim.", 50027
            ) from None
        except jwt.PyJWTError:
            raise _Refusal(401, "invalid_client", "AADSTS700027: Client assertion failed signature validation.", 700027) from None
        if claims["sub"] != client_id:
            raise _Refusal(401, "invalid_client", "AADSTS700023: Client assertion subject must equal its issuer.", 700023)
        return client_id

    def _jwt_bearer(self, form: dict[str, str], token_url: str, attempt: _Attempt) -> None:
        attempt.auth = "jwt-bearer"
        assertion = form.get("assertion")
        if not assertion:
            raise _Refusal(400, "invalid_request", "Missing required parameter: assertion")
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise _Refusal(400, "invalid_grant", "Invalid JWT: malformed assertion.") from None
        issuer = unverified.get("iss")
        attempt.client = issuer if isinstance(issuer, str) else None
        with self._lock:
            account = self._accounts.get(attempt.client or "")
        if account is None:
            raise _Refusal(400, "invalid_grant", "Invalid grant: account not found")
        if account.key_id is not None and header.get("kid", account.key_id) != account.key_id:
            raise _Refusal(400, "invalid_grant", "Invalid JWT Signature.")
        try:
            claims = jwt.decode(
                assertion, account.public_key, algorithms=_ALGORITHMS, audience=token_url, issuer=account.client_email,  # type: ignore[arg-type]
                options={"require": ["aud", "exp", "iat", "iss"]},
            )  # fmt: skip
        except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError, jwt.MissingRequiredClaimError):
            raise _Refusal(400, "invalid_grant", _SHORT_LIVED) from None
        except jwt.InvalidAudienceError:
            raise _Refusal(
                400, "invalid_grant", f"Invalid JWT: Failed audience check. The right audience is {token_url}"
            ) from None
        except jwt.PyJWTError:
            raise _Refusal(400, "invalid_grant", "Invalid JWT Signature.") from None
        if not isinstance(claims["exp"], int | float) or claims["exp"] - claims["iat"] > 3600:
            raise _Refusal(400, "invalid_grant", _SHORT_LIVED)
        subject, scope = claims.get("sub"), claims.get("scope")
        if not isinstance(subject, str) or not subject:
            raise _Refusal(400, "invalid_grant", "Invalid JWT: no 'sub': domain-wide delegation needs the mailbox to act as.")
        if not isinstance(scope, str) or not scope:
            raise _Refusal(400, "invalid_scope", "Empty or missing scope not allowed.")
        attempt.subject, attempt.scope = subject, scope


_AADSTS7000216 = (
    "AADSTS7000216: 'client_assertion', 'client_secret' or 'request' is required for the 'client_credentials' grant type."
)
_DOWN_PAGE = "<html><head><title>503 Service Unavailable</title></head><body>Service Unavailable</body></html>"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}  # RFC 6749 §5.1
_SHORT_LIVED = (
    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
    "Check your iat and exp values in the JWT claim."
)


def _mailbox(address: str) -> str:
    return address.casefold()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# -- credential material, made at test time ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CertificateCredential:
    """An app's certificate credential: the key the gateway signs with, the certificate uploaded to the provider."""

    private_key_pem: str = field(repr=False)
    certificate_pem: str


def certificate_credential(kind: Literal["rsa", "ec"] = "rsa", common_name: str = "mailgate-test") -> CertificateCredential:
    """A fresh key and self-signed certificate (what ``New-SelfSignedCertificate`` makes for an app registration)."""
    key = _private_key(kind)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = time.time()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime.fromtimestamp(now - 60, datetime.UTC))
        .not_valid_after(datetime.datetime.fromtimestamp(now + 86400, datetime.UTC))
        .sign(key, hashes.SHA256())
    )
    return CertificateCredential(_pem(key), certificate.public_bytes(serialization.Encoding.PEM).decode())


@dataclass(frozen=True)
class ServiceAccountKey:
    """A Google service account's key pair; ``json()`` is the key file an admin downloads."""

    client_email: str
    key_id: str
    private_key_pem: str = field(repr=False)
    public_key_pem: str

    def json(self, token_uri: str) -> str:
        return json.dumps(
            {
                "type": "service_account",
                "project_id": "mailgate-test",
                "private_key_id": self.key_id,
                "private_key": self.private_key_pem,
                "client_email": self.client_email,
                "client_id": "1234567890",
                "auth_uri": "https://accounts.google.com/o/oauth2/auth",
                "token_uri": token_uri,
            }
        )


def service_account_key(client_email: str = "mailgate@mailgate-test.iam.gserviceaccount.com") -> ServiceAccountKey:
    key = _private_key("rsa")
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return ServiceAccountKey(client_email, secrets.token_hex(20), _pem(key), public.decode())


def _private_key(kind: Literal["rsa", "ec"]) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
