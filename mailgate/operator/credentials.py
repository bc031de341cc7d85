"""Credentials from Secrets, as the operator reads them: which Secrets an account reads, and what it finds there.

The rules (keys needed, SecretNotFound, KeyMissing, KeyInvalid and their
words) are ``mailgate.secretrefs``', shared with standalone mode; this module
adds the apiserver's side: Secret ``data`` decoded, the first problem as the
account's condition, and SMTP client passwords hashed off the event loop. A
problem names the Secret and the key, never a value: its text goes to the
status, an Event and the log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..oauth2.config import SECRET_KEYS
from ..password_cache import PasswordHashes
from ..secretrefs import CredentialProblem, Resolved, SecretLookup, SecretValues, decode_data_value, resolve_secrets
from ..snapshot import SmtpClientCredential
from ..spec import AuthMethod, SmtpAccountSpec


def secret_values(data: Mapping[str, str] | None) -> SecretValues:
    """Decode the relevant keys of a Secret's ``data`` (the apiserver returns base64 only)."""
    return {key: decode_data_value(raw) for key, raw in (data or {}).items() if key in SECRET_KEYS}


def secret_names(spec: SmtpAccountSpec) -> set[str]:
    """Every Secret (in the account's namespace) the account reads."""
    names = {client.secret_ref.name for client in spec.access.smtp_clients}
    if spec.auth.method != AuthMethod.none and spec.auth.secret_ref is not None:
        names.add(spec.auth.secret_ref.name)
    if spec.delivery.webhook is not None:
        names.add(spec.delivery.webhook.secret_ref.name)
    return names


def resolve(namespace: str, spec: SmtpAccountSpec, lookup: SecretLookup) -> Resolved | CredentialProblem:
    """The account's upstream credentials and SMTP client logins, or the first problem (one condition shows one)."""
    resolved, problems = resolve_secrets(namespace, spec, lookup)
    return problems[0].problem if problems else resolved


class LoginHasher(PasswordHashes):
    """Hashes the SMTP client passwords the operator pushes, each (username, password) once for the process.

    Why a cache: every hash has a fresh salt, so re-hashing an unchanged
    password would change the account's config digest and re-push it to every
    gateway on each reconcile. Hashing (scrypt, tens of milliseconds) runs in
    a thread.
    """

    async def hash_all(self, logins: Iterable[tuple[str, str]]) -> tuple[SmtpClientCredential, ...]:
        hashed = []
        for username, password in logins:
            password_hash = await self.hash_in_thread(username, password)
            hashed.append(SmtpClientCredential(username=username, password_hash=password_hash))
        return tuple(hashed)
