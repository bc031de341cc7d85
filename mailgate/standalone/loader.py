"""Read the YAML that ``kubectl apply -f`` takes and turn it into a gateway snapshot.

Standalone mode has no apiserver, so this module plays its part: it validates
every ``SmtpAccount`` with the same pydantic model the CRD is rendered from,
decodes ``v1`` Secrets (``data`` base64, ``stringData`` plain, ``stringData``
winning as in Kubernetes) and resolves each account's ``auth.secretRef`` in the
account's namespace, as the operator does in a cluster.

Every problem names the file, the document (1-based, with kind and
namespace/name when known) and the field path, and all problems of a load are
reported together so a user fixes a file in one pass. No message ever contains
a value read from a file: YAML errors are rebuilt from their position and
problem only (PyYAML's own text quotes the offending line, which may hold a
password) and pydantic errors are reduced to their location and message.

Scalars are typed as YAML 1.1 does (``port: 587`` an int, ``false`` a bool),
then validated in pydantic's lax mode, which takes a quoted ``"587"`` for an
integer field, where the apiserver's schema check refuses it: such a file
works here and not with ``kubectl apply``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from secrets import token_bytes
from typing import Any

import yaml
from pydantic import ValidationError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..gcpause import collection_paused
from ..oauth2.config import grant_for, secret_keys
from ..oauth2.grants import GrantError
from ..passwords import hash_password
from ..snapshot import AccountConfig, ConfigSnapshot, Credentials, SmtpClientCredential
from ..spec import SmtpAccount

try:  # libyaml's parser: ~10x faster than PyYAML's pure-Python one; PyYAML wheels ship it
    from yaml import CSafeLoader as _SafeBase
except ImportError:  # pragma: no cover - a PyYAML built without libyaml
    from yaml import SafeLoader as _SafeBase  # type: ignore[assignment]

log = logging.getLogger(__name__)


class ConfigError(Exception):
    """A load that found problems; ``problems`` holds one line per problem, none with a value."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


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


def load_snapshot(paths: Iterable[str | Path], revision: int = 1) -> ConfigSnapshot:
    """Load accounts and Secrets from ``paths`` into a snapshot with ``revision``; raise ConfigError."""
    problems: list[str] = []
    accounts: dict[str, tuple[_Origin, SmtpAccount]] = {}
    secrets: dict[str, _Secret] = {}
    with collection_paused():  # thousands of accounts: no cycle collections while they are built
        for path in paths:
            for origin, document in _documents(Path(path), problems):
                _classify(origin, document, accounts, secrets, problems)
        configs = [_resolve(origin, account, secrets, problems) for origin, account in accounts.values()]
    _check_unique_logins(accounts, configs, problems)
    if problems:
        raise ConfigError(problems)
    configs.sort(key=lambda config: config.key)
    return ConfigSnapshot(revision=revision, accounts=configs)


class _Unusual(Exception):
    """A node the fast path of ``ConfigLoader`` leaves to PyYAML's own construction."""


_STR, _SEQ, _MAP = (f"tag:yaml.org,2002:{name}" for name in ("str", "seq", "map"))
_SCALAR_TAGS = [f"tag:yaml.org,2002:{name}" for name in ("null", "bool", "int", "float", "binary", "timestamp", "str")]


class ConfigLoader(_SafeBase):
    """PyYAML's safe loader (libyaml's parser where available) that builds plain documents itself.

    Why: for 10,000 accounts and their Secrets (4.7 MB, 1.1 million nodes),
    PyYAML's generic construction (a generator per mapping, memo tables,
    per-node dispatch) and its resolver took 0.55 s of CPU, 40% of the YAML
    time and a fifth of ``mailgate serve``'s start; ``yaml.load_all`` of
    them takes 0.8 s here, 1.3 s with ``CSafeLoader``. A document made only of
    mappings, sequences and scalars of the safe tags is built by one direct
    walk; any other (an alias of a collection, a merge key, ``!!set``, an
    unknown tag, a collection as a key, deep nesting) is built by PyYAML as
    before, so the result and the errors are those of ``yaml.safe_load_all``,
    with the same implicit typing. One difference, on purpose: a scalar whose
    explicit tag does not fit its value (``!!int abc``) is a marked YAML
    error, not a ValueError quoting the value (which crashed the load).
    """

    def construct_document(self, node: Node) -> Any:
        try:
            return self._plain(node, set())
        except (_Unusual, RecursionError):
            return super().construct_document(node)

    def _plain(self, node: Node, containers: set[int]) -> Any:
        tag = node.tag
        if type(node) is ScalarNode:
            if tag == _STR:
                return node.value
            construct = _SCALARS.get(tag)
            if construct is None:
                raise _Unusual
            return construct(self, node)
        if id(node) in containers:  # an alias: PyYAML shares one object (and allows recursion)
            raise _Unusual
        containers.add(id(node))
        if tag == _MAP and type(node) is MappingNode:
            mapping = {}
            for key_node, value_node in node.value:
                if type(key_node) is not ScalarNode:  # unhashable: PyYAML refuses it, with its marks
                    raise _Unusual
                mapping[self._plain(key_node, containers)] = self._plain(value_node, containers)
            return mapping
        if tag == _SEQ and type(node) is SequenceNode:
            return [self._plain(item, containers) for item in node.value]
        raise _Unusual

    def resolve(self, kind: type[Node], value: str, implicit: tuple[bool, bool]) -> str:
        """``BaseResolver.resolve`` without building two lists per node (libyaml calls it for every node).

        The same implicit resolvers by first character; this class has neither
        wildcard nor path resolvers (checked below), the only other branches there.
        """
        if kind is ScalarNode:
            if implicit[0]:
                for tag, regexp in self.yaml_implicit_resolvers.get(value[:1], ()):
                    if regexp.match(value):
                        return tag
            return self.DEFAULT_SCALAR_TAG
        return self.DEFAULT_SEQUENCE_TAG if kind is SequenceNode else self.DEFAULT_MAPPING_TAG


def _value_free(tag: str, construct: Any) -> Any:
    """A scalar constructor whose failures are marked YAML errors naming the tag, never the value."""
    short = tag.replace("tag:yaml.org,2002:", "!!")

    def construct_or_refuse(loader: ConfigLoader, node: Node) -> Any:
        try:
            return construct(loader, node)
        except Exception:  # int("abc"), a 13th month, bool("maybe"): their texts quote the value
            raise ConstructorError(None, None, f"expected a valid {short} value", node.start_mark) from None

    return construct_or_refuse


for _tag in _SCALAR_TAGS:
    ConfigLoader.add_constructor(_tag, _value_free(_tag, ConfigLoader.yaml_constructors[_tag]))
_SCALARS = {tag: ConfigLoader.yaml_constructors[tag] for tag in _SCALAR_TAGS}
assert None not in ConfigLoader.yaml_implicit_resolvers and not ConfigLoader.yaml_path_resolvers, "see resolve"


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


def describe_yaml_error(error: yaml.YAMLError) -> str:
    """Position and problem only: PyYAML's own message quotes the source line."""
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        position = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        return f"invalid YAML: {position}{error.problem or error.context or 'syntax error'}"
    return "invalid YAML"


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
        for item in error.errors(include_input=False, include_url=False):
            problems.append(f"{origin}: {field_path(item['loc'])}: {item['msg']}")
        return None


def field_path(loc: tuple[int | str, ...]) -> str:
    """``('spec', 'senders', 0)`` -> ``spec.senders[0]``."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(document)"


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
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def _resolve(origin: _Origin, account: SmtpAccount, secrets: dict[str, _Secret], problems: list[str]) -> AccountConfig:
    """Attach upstream credentials and SMTP client logins from the referenced Secrets, as the operator does."""
    auth = account.spec.auth
    credentials = Credentials()
    needed = secret_keys(auth)
    # A missing secretRef never gets here: the model refuses it, as the CRD's CEL rule does.
    if needed and auth.secret_ref is not None:
        why = f"auth method {auth.method.value} needs {' and '.join(needed)}"
        values = _secret_values(origin, "spec.auth.secretRef", account, auth.secret_ref.name, needed, why, secrets, problems)
        if values is not None and auth.oauth2 is not None:
            try:
                grant_for(auth.oauth2, values)  # refuse a broken key now, with the file and field, not at the first send
            except GrantError as error:
                secret_key = f"{account.metadata.namespace}/{auth.secret_ref.name}"
                problems.append(f"{origin}: spec.auth.secretRef: Secret {secret_key}: {error}")
            credentials = Credentials.model_validate({"username": auth.oauth2.mailbox, "oauth2Secret": values})
        elif values is not None:
            credentials = Credentials.model_validate(values)
    clients: list[SmtpClientCredential] = []
    for index, client in enumerate(account.spec.access.smtp_clients):
        field = f"spec.access.smtpClients[{index}].secretRef"
        needed = ("username", "password")
        values = _secret_values(origin, field, account, client.secret_ref.name, needed, "an SMTP client login", secrets, problems)
        if values is not None:
            clients.append(SmtpClientCredential(username=values["username"], password_hash=_password_hash(values)))
    return AccountConfig(
        namespace=account.metadata.namespace,
        name=account.metadata.name,
        generation=account.metadata.generation,
        spec=account.spec,
        credentials=credentials,
        smtp_clients=clients,
    )


def _secret_values(
    origin: _Origin,
    field: str,
    account: SmtpAccount,
    secret_name: str,
    needed: tuple[str, ...],
    why: str,
    secrets: dict[str, _Secret],
    problems: list[str],
) -> dict[str, str] | None:
    """The ``needed`` keys of a Secret in the account's namespace; a missing Secret or key is a problem naming both."""
    secret_key = f"{account.metadata.namespace}/{secret_name}"
    secret = secrets.get(secret_key)
    if secret is None:
        problems.append(f"{origin}: {field}: Secret {secret_key} not found in the loaded files")
        return None
    missing = [key for key in needed if key not in secret.values]
    for key in missing:
        problems.append(f"{origin}: {field}: Secret {secret_key} ({secret.origin}) has no key {key!r} ({why})")
    return None if missing else {key: secret.values[key] for key in needed}


# SMTP client passwords are hashed with scrypt (tens of milliseconds each). A reload re-reads every
# Secret, so the hash of an unchanged (username, password) is reused: the snapshot then stays equal
# and nothing is re-applied. The cache key is an HMAC under a key that exists only in this process.
_HASH_CACHE_KEY = token_bytes(32)
_HASH_CACHE: OrderedDict[bytes, str] = OrderedDict()
_HASH_CACHE_SIZE = 1024


def _password_hash(values: dict[str, str]) -> str:
    parts = [values["username"].encode(), values["password"].encode()]
    fingerprint = hmac.new(_HASH_CACHE_KEY, b"".join(len(p).to_bytes(4, "big") + p for p in parts), hashlib.sha256).digest()
    cached = _HASH_CACHE.get(fingerprint)
    if cached is None:
        cached = _HASH_CACHE[fingerprint] = hash_password(values["password"])
        while len(_HASH_CACHE) > _HASH_CACHE_SIZE:
            _HASH_CACHE.popitem(last=False)
    _HASH_CACHE.move_to_end(fingerprint)
    return cached


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
