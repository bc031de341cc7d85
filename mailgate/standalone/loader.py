"""Read the YAML that ``kubectl apply -f`` takes and turn it into a gateway snapshot.

Standalone mode has no apiserver, so this module plays its part: it validates
every ``SmtpAccount`` with the same pydantic model the CRD is rendered from,
decodes ``v1`` Secrets (``data`` base64, ``stringData`` plain, ``stringData``
winning as in Kubernetes) and resolves each account's ``auth.secretRef`` in the
account's namespace by the operator's own rules (``mailgate.secretrefs``).

Every problem names the file, the document (1-based, with kind and
namespace/name when known) and the field path, and all problems of a load are
reported together so a user fixes a file in one pass. No message ever contains
a value read from a file: YAML errors are rebuilt from their position and
problem only (PyYAML's own text quotes the offending line, which may hold a
password) and pydantic errors are reduced to their location and message
(``mailgate.validation``: the format of the HTTP API and the operator too).

Scalars are typed as YAML 1.1 does (``port: 587`` an int, ``false`` a bool),
then validated in pydantic's lax mode, which takes a quoted ``"587"`` for an
integer field, where the apiserver's schema check refuses it: such a file
works here and not with ``kubectl apply``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..gcpause import collection_paused
from ..oauth2.config import grant_for
from ..oauth2.grants import GrantError
from ..password_cache import PasswordHashes
from ..secretrefs import SecretRefProblem, SecretValues, decode_data_value, resolve_secrets
from ..snapshot import AccountConfig, ConfigSnapshot, SmtpClientCredential
from ..spec import SmtpAccount
from ..validation import field_problems
from ..yamlconfig import ConfigError, ConfigLoader, describe_yaml_error

__all__ = ["ConfigError", "ConfigLoader", "describe_yaml_error", "load_snapshot"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Origin:
    """Where a document came from, for messages: ``accounts.yaml: document 2 (SmtpAccount shop/billing)``."""

    path: str
    index: int
    kind: str | None = None
    key: str | None = None

    def __str__(self) -> str:
        where = f"{self.path}: document {self.index}"
        label = " ".join(part for part in (self.kind, self.key) if part)
        return f"{where} ({label})" if label else where


@dataclass(frozen=True)
class _Secret:
    origin: _Origin
    values: dict[str, str]


def load_snapshot(paths: Iterable[str | Path], revision: int = 1, *, hashes: PasswordHashes | None = None) -> ConfigSnapshot:
    """Load accounts and Secrets from ``paths`` into a snapshot with ``revision``; raise ConfigError.

    SMTP client passwords are hashed through ``hashes``: whoever reloads the
    files passes the same one each time, so that an unchanged login keeps its
    hash and the snapshot stays equal. Without it, this load hashes afresh.
    """
    hashes = hashes if hashes is not None else PasswordHashes()
    problems: list[str] = []
    accounts: dict[str, tuple[_Origin, SmtpAccount]] = {}
    secrets: dict[str, _Secret] = {}
    with collection_paused():  # thousands of accounts: no cycle collections while they are built
        for path in paths:
            for origin, document in _documents(Path(path), problems):
                _classify(origin, document, accounts, secrets, problems)
        configs = [_resolve(origin, account, secrets, hashes, problems) for origin, account in accounts.values()]
    _check_unique_logins(accounts, configs, problems)
    if problems:
        raise ConfigError(problems)
    configs.sort(key=lambda config: config.key)
    return ConfigSnapshot(revision=revision, accounts=configs)


def _documents(path: Path, problems: list[str]) -> Iterator[tuple[_Origin, Any]]:
    """Yield each non-empty document; a ``kind: List`` (``kubectl get -o yaml``) yields its items."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        problems.append(f"{path}: cannot read: {getattr(error, 'strerror', None) or type(error).__name__}")
        return
    index = 0
    try:
        for document in yaml.load_all(text, Loader=ConfigLoader):
            index += 1
            if document is None:
                continue
            if isinstance(document, dict) and document.get("kind") == "List" and isinstance(document.get("items"), list):
                for item_index, item in enumerate(document["items"], start=1):
                    yield _Origin(f"{path}", index, kind=f"List item {item_index}"), item
                continue
            yield _Origin(str(path), index), document
    except yaml.YAMLError as error:
        problems.append(f"{path}: document {index + 1}: {describe_yaml_error(error)}")


def _classify(
    origin: _Origin,
    document: Any,
    accounts: dict[str, tuple[_Origin, SmtpAccount]],
    secrets: dict[str, _Secret],
    problems: list[str],
) -> None:
    if not isinstance(document, dict):
        problems.append(f"{origin}: expected a mapping with apiVersion, kind and metadata")
        return
    kind = document.get("kind")
    api_version = document.get("apiVersion")
    metadata = document.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    namespace = (metadata.get("namespace") if isinstance(metadata, dict) else None) or "default"
    key = f"{namespace}/{name}" if isinstance(name, str) else None
    origin = _Origin(origin.path, origin.index, kind=_label(origin.kind, kind), key=key)
    if kind == "SmtpAccount" and str(api_version).startswith("mailgate.dev/"):
        account = _validate_account(origin, document, problems)
        if account is not None:
            _add_unique(accounts, account.key, (origin, account), origin, "SmtpAccount", problems, lambda item: item[0])
    elif kind == "Secret" and api_version == "v1":
        secret = _decode_secret(origin, document, key, problems)
        if secret is not None and key is not None:
            _add_unique(secrets, key, secret, origin, "Secret", problems, lambda item: item.origin)
    else:
        log.warning("%s: ignored (standalone mode reads only SmtpAccount and v1 Secret)", origin)


def _label(prefix: str | None, kind: Any) -> str:
    kind_text = kind if isinstance(kind, str) else "unknown kind"
    return f"{prefix}: {kind_text}" if prefix else kind_text


def _add_unique(table: dict, key: str, value: Any, origin: _Origin, kind: str, problems: list[str], origin_of: Any) -> None:
    if key in table:
        problems.append(f"{origin}: duplicate {kind} {key}, first defined in {origin_of(table[key])}")
    else:
        table[key] = value


def _validate_account(origin: _Origin, document: dict[str, Any], problems: list[str]) -> SmtpAccount | None:
    try:
        return SmtpAccount.model_validate(document)
    except ValidationError as error:
        problems.extend(f"{origin}: {problem.field}: {problem.message}" for problem in field_problems(error, whole="(document)"))
        return None


def _decode_secret(origin: _Origin, document: dict[str, Any], key: str | None, problems: list[str]) -> _Secret | None:
    if key is None:
        problems.append(f"{origin}: metadata.name: a Secret needs a name")
        return None
    values: dict[str, str] = {}
    ok = True
    for field in ("data", "stringData"):
        section = document.get(field) or {}
        if not isinstance(section, dict):
            problems.append(f"{origin}: {field}: expected a mapping of key to value")
            ok = False
            continue
        for item_key, value in section.items():
            decoded = _secret_value(field, value)
            if decoded is None:
                problems.append(f"{origin}: {field}.{item_key}: {_SECRET_VALUE_PROBLEM[field]}")
                ok = False
            else:
                values[str(item_key)] = decoded
    return _Secret(origin, values) if ok else None


_SECRET_VALUE_PROBLEM = {
    "data": "not valid base64-encoded UTF-8 (put plain text under stringData)",
    "stringData": "expected a string",
}


def _secret_value(field: str, value: Any) -> str | None:
    if field == "stringData":
        return value if isinstance(value, str) else None
    return decode_data_value(value)


def _resolve(
    origin: _Origin, account: SmtpAccount, secrets: dict[str, _Secret], hashes: PasswordHashes, problems: list[str]
) -> AccountConfig:
    """Attach upstream credentials and SMTP client logins from the referenced Secrets, by the operator's rules."""
    namespace = account.metadata.namespace

    def lookup(secret_namespace: str, name: str) -> SecretValues | None:
        secret = secrets.get(f"{secret_namespace}/{name}")
        return secret.values if secret is not None else None

    resolved, secret_problems = resolve_secrets(namespace, account.spec, lookup)
    problems.extend(_describe(origin, namespace, found, secrets) for found in secret_problems)
    auth = account.spec.auth
    oauth2_secret = resolved.credentials.oauth2_secret
    if auth.oauth2 is not None and auth.secret_ref is not None and oauth2_secret is not None:
        try:  # refuse a broken key now, with the file and field, not at the first send
            grant_for(auth.oauth2, {key: value.get_secret_value() for key, value in oauth2_secret.items()})
        except GrantError as error:
            problems.append(f"{origin}: spec.auth.secretRef: Secret {namespace}/{auth.secret_ref.name}: {error}")
    return AccountConfig(
        namespace=namespace,
        name=account.metadata.name,
        generation=account.metadata.generation,
        spec=account.spec,
        credentials=resolved.credentials,
        smtp_clients=[
            SmtpClientCredential(username=username, password_hash=hashes.hash(username, password))
            for username, password in resolved.client_logins
        ],
    )


def _describe(origin: _Origin, namespace: str, found: SecretRefProblem, secrets: dict[str, _Secret]) -> str:
    """The problem in the account's file and field; for a Secret that exists, the file it is in too."""
    secret = secrets.get(f"{namespace}/{found.secret_name}")
    where = f"; see {secret.origin}" if secret is not None else ""
    return f"{origin}: {found.field}: {found.problem.message}{where}"


def _check_unique_logins(
    accounts: dict[str, tuple[_Origin, SmtpAccount]], configs: list[AccountConfig], problems: list[str]
) -> None:
    """An SMTP login names one account; the same username on two accounts is refused here, not at login."""
    first: dict[str, str] = {}
    for config in configs:
        for client in config.smtp_clients:
            owner = first.setdefault(client.username, config.key)
            if owner != config.key:
                origin = accounts[config.key][0]
                problems.append(
                    f"{origin}: spec.access.smtpClients: SMTP login {client.username!r} is also used by SmtpAccount {owner}"
                )
