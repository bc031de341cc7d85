"""Who is calling the send API, and which accounts they may use.

The send API never decides *how* a caller proves who they are; it asks an
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

from typing import Protocol

from aiohttp import web

from ..relay.identity import Identity

__all__ = ["AllowAnyone", "Authenticator", "bearer_token"]


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
