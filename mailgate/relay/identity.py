"""Who asks the relay to send, and which accounts they may use: no protocol, no credentials.

A door authenticates its caller its own way (a bearer token or API key over
HTTP, an SMTP login or a trusted network) and hands the core an
``Identity``: a display name for logs (never a secret) and a predicate over
the account being used. The predicate receives the account's ``access``
spec so that a ServiceAccount identity can consult it, while an API-key or
SMTP-login identity can ignore it and match account names instead.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..spec import AccessSpec


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
