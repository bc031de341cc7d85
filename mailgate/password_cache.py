"""SMTP client password hashes, made once per (username, password) and reused while the login is unchanged.

Why: every hash has a fresh salt (``mailgate.passwords``), so hashing an
unchanged password again would change the account's configuration digest,
and the operator would push it to every gateway on each reconcile, and
standalone mode would apply a new revision on each reload. The operator and
standalone mode each own one ``PasswordHashes`` for as long as they run.

What it holds: a ``KeyedFingerprint`` of (username, password) and the salted
scrypt hash, never a password. Bounded: the least recently used login goes
first when it is full.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict

from .fingerprint import KeyedFingerprint
from .passwords import hash_password

__all__ = ["DEFAULT_MAX_ENTRIES", "PasswordHashes"]

DEFAULT_MAX_ENTRIES = 16384
"""Logins kept; beyond it, a login not seen for longest is hashed again (and its account re-pushed) when next seen."""


class PasswordHashes:
    """(username, password) -> its salted hash, the same one each time; safe to use from several threads."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._fingerprint = KeyedFingerprint()
        self._hashes: OrderedDict[bytes, str] = OrderedDict()
        self._lock = threading.Lock()  # scrypt runs outside it; only the table's updates are inside

    def __repr__(self) -> str:
        return f"<PasswordHashes {len(self)} of {self.max_entries}>"

    def __len__(self) -> int:
        return len(self._hashes)

    def hash(self, username: str, password: str) -> str:
        """The hash of this login: the cached one, or a new one made here (tens of milliseconds of CPU)."""
        fingerprint = self._fingerprint(username, password)
        return self._cached(fingerprint) or self._store(fingerprint, hash_password(password))

    async def hash_in_thread(self, username: str, password: str) -> str:
        """As ``hash``, with a new hash made in a worker thread so that the event loop keeps running."""
        fingerprint = self._fingerprint(username, password)
        return self._cached(fingerprint) or self._store(fingerprint, await asyncio.to_thread(hash_password, password))

    def _cached(self, fingerprint: bytes) -> str | None:
        with self._lock:
            hashed = self._hashes.get(fingerprint)
            if hashed is not None:
                self._hashes.move_to_end(fingerprint)
            return hashed

    def _store(self, fingerprint: bytes, hashed: str) -> str:
        """Keep ``hashed`` unless another caller stored one for the login meanwhile: the first one stays."""
        with self._lock:
            hashed = self._hashes.setdefault(fingerprint, hashed)
            self._hashes.move_to_end(fingerprint)
            while len(self._hashes) > self.max_entries:
                self._hashes.popitem(last=False)
            return hashed
