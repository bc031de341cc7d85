"""Who is calling the send API, and which accounts they may use.

The gateway never decides *how* a caller proves who they are; it asks an
``Authenticator``. Two plug in today or soon:

- standalone mode (``mailgate.standalone.ApiKeys``): a bearer API key looked
  up in a file of hashed keys; the key's entry names the accounts it may use;
- in-cluster mode (issue 8): a Kubernetes ServiceAccount token checked with a
  TokenReview; the account's own ``spec.access`` decides.

Both answer with an ``Identity``: a display name for logs (never a secret)
and a predicate over the account being used. The predicate receives the
account's ``access`` spec so that a ServiceAccount identity can consult it,
while an API-key identity can ignore it and match account names instead.

``authenticate`` returning ``None`` means "not authenticated" (401); an
identity whose predicate refuses the account means "not allowed" (403).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web

from ..spec import AccessSpec

__all__ = [
    "AccountRef",
    "AllowAnyone",
    "Authenticator",
    "Identity",
    "bearer_token",
]


@dataclass(frozen=True, slots=True)
class AccountRef:
    """The account a caller wants to use, as an identity's predicate sees it."""

    namespace: str
    name: str
    access: AccessSpec = field(default_factory=AccessSpec)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller.

    ``name`` appears in logs (``system:serviceaccount:shop:checkout``,
    ``apikey:ci``), so it must never contain a credential. ``may_use`` is the
    whole authorisation decision for one account.
    """

    name: str
    may_use: Callable[[AccountRef], bool]

    @classmethod
    def service_account(cls, namespace: str, name: str) -> Identity:
        """A Kubernetes ServiceAccount: allowed where the account's ``access`` lists it or its namespace."""
        qualified = f"{namespace}/{name}"

        def allowed(account: AccountRef) -> bool:
            return qualified in account.access.service_accounts or namespace in account.access.namespaces

        return cls(name=f"system:serviceaccount:{namespace}:{name}", may_use=allowed)

    @classmethod
    def for_accounts(cls, name: str, patterns: Iterable[str]) -> Identity:
        """A caller allowed on accounts matching ``namespace/name`` glob patterns (``shop/*``, ``*``).

        The account's ``access`` spec is not consulted: in standalone mode the
        key file, not the account, says who may use what.
        """
        frozen = tuple(patterns)

        def allowed(account: AccountRef) -> bool:
            return any(fnmatch.fnmatchcase(account.key, pattern) for pattern in frozen)

        return cls(name=name, may_use=allowed)


class Authenticator(Protocol):
    """Turns a send request into an ``Identity``, or ``None`` when the caller is not authenticated.

    Called once per send request, before the body is read; implementations
    should cache anything expensive (a TokenReview answer, a key hash). They
    must not raise for bad credentials (return ``None``); an exception means
    the authenticator itself failed and becomes a 503.
    """

    async def authenticate(self, request: web.Request) -> Identity | None: ...


class AllowAnyone:
    """Every caller may use every account. For ``mailgate dev`` and tests, never for a shared gateway."""

    async def authenticate(self, request: web.Request) -> Identity | None:
        return Identity(name="anonymous", may_use=lambda account: True)


def bearer_token(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or ``None``."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None
