"""Credentials from Secrets: which Secrets an account reads, and what it finds there.

Pure apart from ``LoginHasher``'s thread. A problem names the Secret and the
key, never a value: its text goes to the status, an Event and the log.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from pydantic import SecretStr

from ..oauth2.config import SECRET_KEYS, secret_keys
from ..passwords import hash_password
from ..snapshot import Credentials, SmtpClientCredential
from ..spec import AuthMethod, SmtpAccountSpec

SecretValues = Mapping[str, str | None]
"""A Secret's relevant keys, decoded; ``None`` for a value that is not base64-encoded UTF-8."""

SecretLookup = Callable[[str, str], SecretValues | None]
"""(namespace, name) -> the Secret's values, or None if there is no such Secret."""


def secret_values(data: Mapping[str, str] | None) -> dict[str, str | None]:
    """Decode the relevant keys of a Secret's ``data`` (the apiserver returns base64 only)."""
    values: dict[str, str | None] = {}
    for key in SECRET_KEYS:
        raw = (data or {}).get(key)
        if raw is None:
            continue
        try:
            values[key] = base64.b64decode(raw, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            values[key] = None
    return values


@dataclass(frozen=True)
class CredentialProblem:
    """Why credentials could not be resolved: ``reason`` is a condition reason, ``message`` names no value."""

    reason: str
    message: str


@dataclass(frozen=True)
class Resolved:
    """Upstream credentials, and SMTP client logins still to be hashed."""

    credentials: Credentials
    client_logins: tuple[tuple[str, str], ...] = ()


def secret_names(spec: SmtpAccountSpec) -> set[str]:
    """Every Secret (in the account's namespace) the account reads."""
    names = {client.secret_ref.name for client in spec.access.smtp_clients}
    if spec.auth.method != AuthMethod.none and spec.auth.secret_ref is not None:
        names.add(spec.auth.secret_ref.name)
    return names


def resolve(namespace: str, spec: SmtpAccountSpec, lookup: SecretLookup) -> Resolved | CredentialProblem:
    """Read the upstream credentials and SMTP client logins of an account from its Secrets."""
    credentials = Credentials()
    needed = secret_keys(spec.auth)
    if needed and spec.auth.secret_ref is not None:
        found = _read(namespace, spec.auth.secret_ref.name, needed, lookup, f"auth method {spec.auth.method.value}")
        if isinstance(found, CredentialProblem):
            return found
        if spec.auth.oauth2 is not None:
            oauth2_secret = {key: SecretStr(value) for key, value in found.items()}
            credentials = Credentials(username=spec.auth.oauth2.mailbox, oauth2_secret=oauth2_secret)
        else:
            credentials = Credentials(
                username=found["username"],
                password=SecretStr(found["password"]) if "password" in found else None,
                token=SecretStr(found["token"]) if "token" in found else None,
            )
    logins: list[tuple[str, str]] = []
    for client in spec.access.smtp_clients:
        found = _read(namespace, client.secret_ref.name, ("username", "password"), lookup, "an SMTP client login")
        if isinstance(found, CredentialProblem):
            return found
        logins.append((found["username"], found["password"]))
    return Resolved(credentials, tuple(logins))


def _read(
    namespace: str, name: str, keys: Iterable[str], lookup: SecretLookup, purpose: str
) -> dict[str, str] | CredentialProblem:
    values = lookup(namespace, name)
    if values is None:
        return CredentialProblem("SecretNotFound", f"Secret {namespace}/{name} not found (needed for {purpose})")
    found: dict[str, str] = {}
    for key in keys:
        value = values.get(key)
        if key in values and value is None:
            return CredentialProblem("KeyInvalid", f"Secret {namespace}/{name}: key {key!r} is not UTF-8 text")
        if not value:
            return CredentialProblem("KeyMissing", f"Secret {namespace}/{name} has no key {key!r} (needed for {purpose})")
        found[key] = value
    return found


class LoginHasher:
    """Hashes SMTP client passwords, once per (username, password) for the life of the process.

    Why a cache: every hash has a fresh salt, so re-hashing an unchanged
    password would change the account's config digest and re-push it to every
    gateway on each reconcile. The cache is keyed by an HMAC under a key that
    exists only in this process, so it holds no password and no unsalted hash.
    Hashing (scrypt, tens of milliseconds) runs in a thread.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self._key = secrets.token_bytes(32)
        self._cache: dict[bytes, str] = {}
        self._max_entries = max_entries

    async def hash_all(self, logins: Iterable[tuple[str, str]]) -> tuple[SmtpClientCredential, ...]:
        result = []
        for username, password in logins:
            fingerprint = hmac.new(self._key, f"{username}\0{password}".encode(), hashlib.sha256).digest()
            hashed = self._cache.get(fingerprint)
            if hashed is None:
                hashed = await asyncio.to_thread(hash_password, password)
                if len(self._cache) >= self._max_entries:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[fingerprint] = hashed
            result.append(SmtpClientCredential(username=username, password_hash=hashed))
        return tuple(result)
