"""What identifies an upstream SMTP account and how its pool may behave.

The pool is deliberately independent of Kubernetes and of the CRD model: the
gateway resolves an ``SmtpAccount`` plus its Secret into these plain, frozen
objects, and the pool only ever sees resolved credentials.
"""

from __future__ import annotations

import hashlib
import ssl
import weakref
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol


class TLSMode(str, Enum):
    """How the session is encrypted; ``starttls`` never falls back to plaintext."""

    IMPLICIT = "implicit"
    STARTTLS = "starttls"
    NONE = "none"


class AuthMethod(str, Enum):
    """``login`` lets aiosmtplib pick PLAIN/LOGIN/CRAM-MD5 from what the server offers."""

    LOGIN = "login"
    XOAUTH2 = "xoauth2"
    NONE = "none"


class TokenSource(Protocol):
    """Where an account's OAuth2 access tokens come from, when they are renewed rather than fixed.

    A session authenticates with the token current when it opens and keeps
    working after a newer one arrives, so a new token never drains sessions.
    """

    async def token(self, timeout: float) -> str:
        """A token valid now; waits at most ``timeout`` for one."""
        ...

    async def renewed(self, rejected: str, timeout: float) -> str:
        """A token other than ``rejected``, which the upstream refused: at most one new token request per call."""
        ...


DEFAULT_PORTS = {TLSMode.IMPLICIT: 465, TLSMode.STARTTLS: 587, TLSMode.NONE: 25}


@dataclass(frozen=True)
class PoolLimits:
    """Per-gateway limits of one account's pool (the operator splits cluster-wide ones)."""

    max_connections: int = 3
    ttl: float = 300.0
    idle_timeout: float = 60.0
    health_check_after_idle: float = 10.0
    max_messages_per_connection: int = 100
    acquire_timeout: float | None = 30.0

    def __post_init__(self) -> None:
        if self.max_connections < 0:
            raise ValueError("max_connections must be >= 0")
        if self.ttl <= 0 or self.idle_timeout <= 0:
            raise ValueError("ttl and idle_timeout must be > 0")
        if self.max_messages_per_connection < 1:
            raise ValueError("max_messages_per_connection must be >= 1")


@dataclass(frozen=True)
class AccountSettings:
    """Everything needed to open and authenticate one upstream session.

    Credentials are excluded from ``repr`` so that a settings object can be
    logged or shown in a traceback without leaking a secret.
    """

    host: str
    port: int | None = None
    tls: TLSMode = TLSMode.STARTTLS
    auth: AuthMethod = AuthMethod.NONE
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    token_source: TokenSource | None = field(default=None, repr=False)
    """XOAUTH2 with renewed tokens: the source replaces ``token`` and is part of the session identity, its tokens are not."""
    limits: PoolLimits | None = None
    verify_tls: bool = True
    ca_pem: str | None = field(default=None, repr=False)
    command_timeout: float = 30.0
    local_hostname: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.tls, TLSMode):  # an Enum call is slow; the registry passes members already
            object.__setattr__(self, "tls", TLSMode(self.tls))
        if not isinstance(self.auth, AuthMethod):
            object.__setattr__(self, "auth", AuthMethod(self.auth))
        if self.auth is AuthMethod.LOGIN and (self.username is None or self.password is None):
            raise ValueError("auth method 'login' needs a username and a password")
        if self.auth is AuthMethod.XOAUTH2 and (self.username is None or (self.token is None) == (self.token_source is None)):
            raise ValueError("auth method 'xoauth2' needs a username and either a token or a token source")

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else DEFAULT_PORTS[self.tls]

    def credential_fingerprint(self) -> str:
        """A short, non-reversible digest: distinguishes rotated secrets without storing them."""
        digest = hashlib.sha256()
        source = f"source:{id(self.token_source)}" if self.token_source is not None else ""
        for part in (self.auth.value, self.username or "", self.password or "", self.token or "", source):
            digest.update(part.encode("utf-8"))
            digest.update(b"\0")
        return digest.hexdigest()[:16]

    def session_key(self) -> tuple[object, ...]:
        """Everything that identifies a session: a change means old sessions must drain."""
        ca_digest = hashlib.sha256(self.ca_pem.encode()).hexdigest()[:16] if self.ca_pem else ""
        return (
            self.host,
            self.effective_port,
            self.tls.value,
            self.verify_tls,
            ca_digest,
            self.username or "",
            self.credential_fingerprint(),
            self.local_hostname or "",
        )

    def display_key(self) -> str:
        """A human-readable identity for logs and stats, never containing a credential."""
        user = f"{self.username}@" if self.username else ""
        return f"{user}{self.host}:{self.effective_port}"

    def build_ssl_context(self) -> ssl.SSLContext | None:
        """The context for this account's sessions, shared with every account that trusts the same CAs.

        A context costs a CA load (~0.8 MB and ~20 ms with the system store),
        so it is built once per (CA bundle, verification) in use, not per
        connection and not per account. Contexts are never changed after this
        (aiosmtplib only reads them), which makes sharing safe. The cache holds
        them weakly: a context no pool uses any more is freed. Raises
        ``ssl.SSLError`` for a CA bundle the ssl module refuses.
        """
        if self.tls is TLSMode.NONE:
            return None
        return shared_tls_context(self.ca_pem, self.verify_tls)


def shared_tls_context(ca_pem: str | None, verify: bool = True) -> ssl.SSLContext:
    """A client context trusting ``ca_pem`` (else the system store), shared by every caller with the same trust.

    Also used for HTTPS to OAuth2 token endpoints, which are trusted like the SMTP server.
    """
    key = (hashlib.sha256(ca_pem.encode()).digest() if ca_pem else b"", verify)
    context = _CONTEXTS.get(key)
    if context is None:
        context = _CONTEXTS[key] = _new_context(ca_pem, verify)
    return context


_CONTEXTS: weakref.WeakValueDictionary[tuple[bytes, bool], ssl.SSLContext] = weakref.WeakValueDictionary()


def _new_context(ca_pem: str | None, verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
