"""From an account's secretRefs and the Secrets they name to credentials: the rules of both modes.

The operator reads Secrets from the apiserver and standalone mode from
files; where the values come from differs, what they mean must not. Here,
once for both: which keys each reference needs, that a Secret that does not
exist is ``SecretNotFound``, an absent or empty key ``KeyMissing``, a value
that is not UTF-8 text ``KeyInvalid``, and the words that say so. A message
names the Secret and the key, never a value: it goes to a status condition,
an Event, a log line or a terminal.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pydantic import SecretStr

from .oauth2.config import WEBHOOK_SECRET, secret_keys
from .queue.webhook_signing import parse_secret
from .snapshot import Credentials
from .spec import AuthSpec, SmtpAccountSpec

__all__ = [
    "CredentialProblem",
    "Resolved",
    "SecretLookup",
    "SecretRefProblem",
    "SecretValues",
    "decode_data_value",
    "resolve_secrets",
]

SecretValues = Mapping[str, str | None]
"""A Secret's keys, decoded; ``None`` for a value that is not base64-encoded UTF-8."""

SecretLookup = Callable[[str, str], SecretValues | None]
"""(namespace, name) -> the Secret's values, or None if there is no such Secret."""

CLIENT_LOGIN_KEYS = ("username", "password")


def decode_data_value(raw: object) -> str | None:
    """A value of a Secret's ``data`` (base64 of UTF-8 text, as the apiserver keeps it) as text; None if it is not."""
    if not isinstance(raw, str):
        return None
    try:
        return base64.b64decode(raw, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):  # not base64 (non-ASCII too), or not UTF-8
        return None


@dataclass(frozen=True)
class CredentialProblem:
    """Why credentials could not be resolved: ``reason`` is a condition reason, ``message`` names no value."""

    reason: str
    message: str


@dataclass(frozen=True)
class SecretRefProblem:
    """A problem and the reference it is about: ``field`` is its path in the account (``spec.auth.secretRef``)."""

    field: str
    secret_name: str
    problem: CredentialProblem


@dataclass(frozen=True)
class Resolved:
    """Upstream credentials, and SMTP client logins (username, password) still to be hashed."""

    credentials: Credentials
    client_logins: tuple[tuple[str, str], ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class _Reference:
    field: str
    secret_name: str
    keys: tuple[str, ...]
    purpose: str


def resolve_secrets(namespace: str, spec: SmtpAccountSpec, lookup: SecretLookup) -> tuple[Resolved, list[SecretRefProblem]]:
    """The account's credentials and client logins, and every problem met on the way, in the order of the spec.

    What resolved is returned even when something else did not: standalone
    mode checks it further so that one load reports everything; the operator
    serves nothing new while there is a problem and reports the first.
    """
    problems: list[SecretRefProblem] = []
    credentials = Credentials()
    auth = spec.auth
    needed = secret_keys(auth)
    if needed and auth.secret_ref is not None:  # a missing secretRef never gets here: the model refuses it
        purpose = f"auth method {auth.method.value}"
        found = _read(namespace, _Reference("spec.auth.secretRef", auth.secret_ref.name, needed, purpose), lookup, problems)
        if found is not None:
            credentials = _credentials(auth, found)
    webhook = spec.delivery.webhook
    if webhook is not None:
        reference = _Reference("spec.delivery.webhook.secretRef", webhook.secret_ref.name, (WEBHOOK_SECRET,), "webhook signing")
        found = _read(namespace, reference, lookup, problems)
        if found is not None and _webhook_secret(namespace, reference, found[WEBHOOK_SECRET], problems):
            credentials = credentials.model_copy(update={"webhook_secret": SecretStr(found[WEBHOOK_SECRET])})
    logins: list[tuple[str, str]] = []
    for index, client in enumerate(spec.access.smtp_clients):
        reference = _Reference(
            f"spec.access.smtpClients[{index}].secretRef", client.secret_ref.name, CLIENT_LOGIN_KEYS, "an SMTP client login"
        )
        found = _read(namespace, reference, lookup, problems)
        if found is not None:
            logins.append((found["username"], found["password"]))
    return Resolved(credentials, tuple(logins)), problems


def _webhook_secret(namespace: str, reference: _Reference, value: str, problems: list[SecretRefProblem]) -> bool:
    """Whether the signing key is one Standard Webhooks receivers can verify with; a problem if not."""
    try:
        parse_secret(value)
    except ValueError as error:  # its message never quotes the value
        secret = f"Secret {namespace}/{reference.secret_name}"
        problem = CredentialProblem("KeyInvalid", f"{secret}: key {WEBHOOK_SECRET!r}: {error}")
        problems.append(SecretRefProblem(reference.field, reference.secret_name, problem))
        return False
    return True


def _credentials(auth: AuthSpec, found: Mapping[str, str]) -> Credentials:
    if auth.oauth2 is not None:  # the long-lived credential; the token comes from the grant made of it
        return Credentials(username=auth.oauth2.mailbox, oauth2_secret={key: SecretStr(value) for key, value in found.items()})
    return Credentials(
        username=found["username"],
        password=SecretStr(found["password"]) if "password" in found else None,
        token=SecretStr(found["token"]) if "token" in found else None,
    )


def _read(namespace: str, reference: _Reference, lookup: SecretLookup, problems: list[SecretRefProblem]) -> dict[str, str] | None:
    """The reference's keys, or None after adding a problem for each one that is not there."""
    secret = f"Secret {namespace}/{reference.secret_name}"
    values = lookup(namespace, reference.secret_name)
    if values is None:
        problem = CredentialProblem("SecretNotFound", f"{secret} not found (needed for {reference.purpose})")
        problems.append(SecretRefProblem(reference.field, reference.secret_name, problem))
        return None
    found: dict[str, str] = {}
    for key in reference.keys:
        value = values.get(key)
        if value:
            found[key] = value
            continue
        if key in values and value is None:
            problem = CredentialProblem("KeyInvalid", f"{secret}: key {key!r} is not UTF-8 text")
        else:
            problem = CredentialProblem("KeyMissing", f"{secret} has no key {key!r} (needed for {reference.purpose})")
        problems.append(SecretRefProblem(reference.field, reference.secret_name, problem))
    return found if len(found) == len(reference.keys) else None
