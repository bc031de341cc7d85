"""SMTP AUTH for the ingress: which account a username and password belong to.

Logins come from ``AccountConfig.smtp_clients`` (the operator or standalone
mode resolved ``spec.access.smtpClients`` and hashed each password with
``mailgate.passwords``), so the gateway holds no client password at all.

Why verification is asynchronous and cached: a scrypt check costs tens of
milliseconds of CPU, which would stall every other session on the event loop,
so it runs in a thread, a few at a time. Apps such as Grafana or Keycloak
open a new session, and log in again, for every message: ``LoginCache``
remembers a successful check for ``CACHE_TTL`` seconds, so such an app pays
for scrypt once a minute rather than once a message. What it keeps, and why
guessing gets no cheaper:

- an entry is a ``KeyedFingerprint`` of (username, password, stored hash),
  an HMAC under a key made at random in this process and never stored or
  sent anywhere, with the account it logged in to; never a password;
- only a password that passed the full scrypt check is cached. A wrong one
  matches no entry and costs a full check, behind the same two check slots,
  and counts against the session's five attempts as before;
- an entry expires ``CACHE_TTL`` seconds after the check that made it (an
  active client does not keep it alive), the cache holds at most
  ``CACHE_SIZE`` entries, and any configuration push that changes an account
  empties it: a rotated or removed login never logs in from the cache.

The cost of the cache: someone who can read this process's memory gets, for
the logins used in the last minute, a fingerprint that checks a password
guess with one HMAC instead of one scrypt. Against the recommended random
passwords (``openssl rand -base64 24``) that is still no way in, and that
reader holds the upstream credentials (which the gateway must keep usable)
anyway.

A username listed by two accounts is a configuration error: it logs in
nowhere (never a coin toss between the accounts) and is logged once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from ..fingerprint import KeyedFingerprint
from ..passwords import DUMMY_HASH, verify_password
from ..relay.accounts import Account

log = logging.getLogger("mailgate.ingress.clients")

CACHE_SIZE = 1024
CACHE_TTL = 60.0  # seconds a successful check is remembered
CONCURRENT_CHECKS = 2  # each scrypt check holds 16 MiB; a flood of logins must not exhaust memory


class AccountSource(Protocol):
    """What the directory needs from the registry (``relay.accounts.AccountRegistry``)."""

    revision: int  # set by every push: accounts change only with it (or with the first push, ``received``)
    received: bool

    def accounts(self) -> dict[str, Account]: ...


@dataclass(frozen=True, slots=True)
class _Login:
    account: str
    password_hash: str


class ClientDirectory:
    """Usernames to accounts, rebuilt whenever an account's configuration digest changes.

    Whether anything changed is first asked of the registry's revision: going
    through every account's digest on each login cost milliseconds per
    connection with ten thousand accounts.
    """

    def __init__(self, source: AccountSource) -> None:
        self.source = source
        self._seen: tuple[int, bool] | None = None  # the registry's (revision, received) last looked at
        self._version: frozenset[tuple[str, str]] = frozenset()
        self._logins: dict[str, _Login] = {}
        self._conflicts: dict[str, tuple[str, ...]] = {}
        self.generation = 0  # counts rebuilds: a changed account (credentials or not) makes a new generation

    def lookup(self, username: str) -> _Login | None:
        """The login for ``username``; ``None`` when unknown or claimed by several accounts."""
        self._refresh()
        return self._logins.get(username)

    def conflicts(self) -> Mapping[str, tuple[str, ...]]:
        """Usernames listed by more than one account, with those accounts (for status pages and tests)."""
        self._refresh()
        return dict(self._conflicts)

    def _refresh(self) -> None:
        seen = (self.source.revision, self.source.received)
        if seen == self._seen:
            return
        self._seen = seen
        accounts = self.source.accounts()
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
        self.generation += 1


class LoginCache:
    """Logins that passed the full check recently: HMAC(username, password, stored hash) -> account, with expiry.

    Entries are kept in the order they were made, which (one time to live for
    all) is also the order they expire in: the oldest goes first when full.

    Not ``mailgate.password_cache.PasswordHashes``, though both key on a
    ``KeyedFingerprint``: that one keeps a hash for as long as the login is
    used, so that it stays the same; this one keeps a verdict for a minute at
    most and forgets it at every configuration push.
    """

    def __init__(self, *, ttl: float = CACHE_TTL, size: int = CACHE_SIZE, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.size = size
        self._clock = clock
        self._fingerprint = KeyedFingerprint()
        self._entries: OrderedDict[bytes, tuple[str, float]] = OrderedDict()

    def __repr__(self) -> str:
        return f"<LoginCache {len(self._entries)} entries, ttl {self.ttl:g} s>"

    def __len__(self) -> int:
        return len(self._entries)

    def fingerprint(self, username: str, password: str, stored_hash: str) -> bytes:
        return self._fingerprint(username, password, stored_hash)

    def get(self, fingerprint: bytes) -> str | None:
        """The account of a login verified less than ``ttl`` seconds ago, or ``None``."""
        entry = self._entries.get(fingerprint)
        if entry is None:
            return None
        account, expires = entry
        if self._clock() >= expires:
            del self._entries[fingerprint]
            return None
        return account

    def put(self, fingerprint: bytes, account: str) -> None:
        now = self._clock()
        self._entries.pop(fingerprint, None)
        self._entries[fingerprint] = (account, now + self.ttl)
        while self._entries and (len(self._entries) > self.size or next(iter(self._entries.values()))[1] <= now):
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


class ClientAuthenticator:
    """Checks SMTP AUTH credentials; answers with the account key or ``None``."""

    def __init__(self, directory: ClientDirectory, cache: LoginCache | None = None) -> None:
        self.directory = directory
        self.cache = cache if cache is not None else LoginCache()
        self.full_checks = 0  # scrypt checks run; a login answered from the cache runs none
        self._generation = directory.generation
        self._slots = asyncio.Semaphore(CONCURRENT_CHECKS)
        self._checking: dict[bytes, asyncio.Task[bool]] = {}  # full checks running, by credential fingerprint

    async def authenticate(self, username: str, password: str) -> str | None:
        login = self.directory.lookup(username)
        generation = self.directory.generation
        if generation != self._generation:  # a configuration push: nothing verified before it counts
            self.cache.clear()
            self._generation = generation
        stored = login.password_hash if login is not None else DUMMY_HASH
        fingerprint = self.cache.fingerprint(username, password, stored)
        if login is not None and self.cache.get(fingerprint) == login.account:
            return login.account
        ok = await self._verify(fingerprint, username, password, stored, generation)
        return login.account if ok and login is not None else None

    async def _verify(self, fingerprint: bytes, username: str, password: str, stored: str, generation: int) -> bool:
        """The full (scrypt) check, run once for every session presenting this very credential meanwhile.

        Apps open connections in bursts, and all of them miss the cache together
        when its entry expires: without this, each would pay ~30 ms of CPU for
        the same answer. Only an identical (username, password, stored hash)
        shares a check, so guessing costs as much as before; the check runs in
        a task of its own, so a session that goes away does not cancel it for
        the others. The task itself caches a passed login, so a session arriving
        as it ends finds either the running check or the cached verdict.
        """
        running = self._checking.get(fingerprint)
        if running is None:
            check = self._check_and_remember(fingerprint, username, password, stored, generation)
            running = self._checking[fingerprint] = asyncio.get_running_loop().create_task(check)
            running.add_done_callback(lambda _: self._checking.pop(fingerprint, None))
        return await asyncio.shield(running)

    async def _check_and_remember(self, fingerprint: bytes, username: str, password: str, stored: str, generation: int) -> bool:
        ok = await self._full_check(password, stored)
        login = self.directory.lookup(username)  # notices a push that arrived while scrypt ran: it may have changed this login
        if ok and login is not None and self.directory.generation == generation:
            self.cache.put(fingerprint, login.account)
        return ok

    async def _full_check(self, password: str, stored: str) -> bool:
        async with self._slots:
            # An unknown username costs a full check too, so timing does not reveal which usernames exist.
            self.full_checks += 1
            return await asyncio.to_thread(verify_password, password, stored)
