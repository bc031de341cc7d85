"""SMTP AUTH for the ingress: which account a username and password belong to.

Logins come from ``AccountConfig.smtp_clients`` (the operator or standalone
mode resolved ``spec.access.smtpClients`` and hashed each password with
``mailgate.passwords``), so the gateway holds no client password at all.

Why verification is asynchronous and cached: a scrypt check costs tens of
milliseconds of CPU, which would stall every other session on the event loop,
so it runs in a thread, a few at a time. Apps such as Grafana or Keycloak
open a new session, and log in again, for every message; a small cache of
successful checks, keyed by an HMAC of (username, password, stored hash) under
a key that exists only in this process's memory, spares them the scrypt cost
after the first login without keeping anything a memory dump could turn back
into a password faster than the scrypt hash itself. A changed hash (password
rotation) changes the key, so a rotated password stops working at once.

A username listed by two accounts is a configuration error: it logs in
nowhere (never a coin toss between the accounts) and is logged once.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from ..gateway.accounts import Account
from ..passwords import DUMMY_HASH, verify_password

log = logging.getLogger("mailgate.ingress.clients")

CACHE_SIZE = 1024
CONCURRENT_CHECKS = 2  # each scrypt check holds 16 MiB; a flood of logins must not exhaust memory


class AccountSource(Protocol):
    """What the directory needs from the registry (``gateway.accounts.AccountRegistry``)."""

    def accounts(self) -> dict[str, Account]: ...


@dataclass(frozen=True, slots=True)
class _Login:
    account: str
    password_hash: str


class ClientDirectory:
    """Usernames to accounts, rebuilt whenever an account's configuration digest changes."""

    def __init__(self, source: AccountSource) -> None:
        self.source = source
        self._version: frozenset[tuple[str, str]] = frozenset()
        self._logins: dict[str, _Login] = {}
        self._conflicts: dict[str, tuple[str, ...]] = {}

    def lookup(self, username: str) -> _Login | None:
        """The login for ``username``; ``None`` when unknown or claimed by several accounts."""
        self._refresh(self.source.accounts())
        return self._logins.get(username)

    def conflicts(self) -> Mapping[str, tuple[str, ...]]:
        """Usernames listed by more than one account, with those accounts (for status pages and tests)."""
        self._refresh(self.source.accounts())
        return dict(self._conflicts)

    def _refresh(self, accounts: dict[str, Account]) -> None:
        version = frozenset((key, account.digest) for key, account in accounts.items())
        if version == self._version:
            return
        owners: dict[str, list[tuple[str, str]]] = {}
        for key, account in sorted(accounts.items()):
            for client in account.config.smtp_clients:
                owners.setdefault(client.username, []).append((key, client.password_hash))
        logins = {user: _Login(*entries[0]) for user, entries in owners.items() if len(entries) == 1}
        conflicts = {user: tuple(key for key, _ in entries) for user, entries in owners.items() if len(entries) > 1}
        for user, keys in conflicts.items():
            if self._conflicts.get(user) != keys:
                log.warning(
                    "SMTP login %r is listed by several accounts (%s); it is refused until that is fixed", user, ", ".join(keys)
                )
        self._version, self._logins, self._conflicts = version, logins, conflicts


class ClientAuthenticator:
    """Checks SMTP AUTH credentials; answers with the account key or ``None``."""

    def __init__(self, directory: ClientDirectory) -> None:
        self.directory = directory
        self._cache_key = secrets.token_bytes(32)
        self._verified: OrderedDict[bytes, str] = OrderedDict()
        self._slots = asyncio.Semaphore(CONCURRENT_CHECKS)

    async def authenticate(self, username: str, password: str) -> str | None:
        login = self.directory.lookup(username)
        stored = login.password_hash if login is not None else DUMMY_HASH
        parts = [part.encode("utf-8") for part in (username, password, stored)]
        material = b"".join(len(part).to_bytes(4, "big") + part for part in parts)  # unambiguous framing
        fingerprint = hmac.new(self._cache_key, material, hashlib.sha256).digest()
        if login is not None and self._verified.get(fingerprint) == login.account:
            self._verified.move_to_end(fingerprint)
            return login.account
        async with self._slots:
            # An unknown username costs a full check too, so timing does not reveal which usernames exist.
            ok = await asyncio.to_thread(verify_password, password, stored)
        if not ok or login is None:
            return None
        self._verified[fingerprint] = login.account
        while len(self._verified) > CACHE_SIZE:
            self._verified.popitem(last=False)
        return login.account
