"""API keys for callers of a standalone gateway: a YAML file of hashed keys.

```yaml
keys:
  - name: ci                      # shown in logs as apikey:ci
    sha256: 9f86d08...            # hex SHA-256 of the key; the key itself is never stored
    accounts: ["shop/billing", "shop/*"]   # namespace/name glob patterns; "*" is every account
```

Why SHA-256 and not scrypt: ``mailgate apikey`` makes keys from 32 random
bytes (256 bits), so there is nothing to guess and nothing a slow hash could
protect; a slow hash only helps low-entropy secrets such as passwords, and it
would cost tens of milliseconds of CPU on every request. The file therefore
holds no secret worth stealing, only digests. A presented key is hashed and
compared with every stored digest using ``hmac.compare_digest``, without an
early exit, so the time taken says nothing about which entry (if any) matched.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from pathlib import Path
from typing import Annotated

import yaml
from aiohttp import web
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from ..relay.identity import Identity
from ..validation import field_problems
from ..yamlconfig import ConfigError, ConfigLoader, describe_yaml_error
from .auth import bearer_token

KEY_PREFIX = "mgk_"
_ACCOUNT_PATTERN = re.compile(r"^(\*|[a-z0-9*]([-a-z0-9.*]*[a-z0-9*])?/(\*|[a-z0-9*]([-a-z0-9.*]*[a-z0-9*])?))$")


def _account_pattern(value: str) -> str:
    if not _ACCOUNT_PATTERN.match(value):
        raise ValueError("expected namespace/name, namespace/* or * (glob patterns)")
    return value


class ApiKeyEntry(BaseModel):
    """One caller: a name for logs, the key's digest and the accounts it may use."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]*$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Lower-case hex SHA-256 of the whole key.")
    accounts: list[Annotated[str, AfterValidator(_account_pattern)]] = Field(
        min_length=1, description="namespace/name glob patterns: shop/billing, shop/*, *"
    )


class _KeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[ApiKeyEntry] = Field(default_factory=list)


def generate_key() -> str:
    """A new key: a recognisable prefix (secret scanners, logs review) and 256 random bits."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def entry_line(name: str, key: str, accounts: list[str]) -> str:
    """The YAML list item to paste under ``keys:`` (validated, so a typo fails here and not at load)."""
    entry = ApiKeyEntry(name=name, sha256=hash_key(key), accounts=accounts)
    quoted = ", ".join(f'"{account}"' for account in entry.accounts)
    return f"  - {{name: {entry.name}, sha256: {entry.sha256}, accounts: [{quoted}]}}"


class KeyRing:
    """The loaded entries; ``match`` finds the entry of a presented key in constant time per entry."""

    def __init__(self, entries: list[ApiKeyEntry]) -> None:
        self.entries = tuple(entries)
        self._digests = tuple(bytes.fromhex(entry.sha256) for entry in entries)

    def match(self, key: str) -> ApiKeyEntry | None:
        presented = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        found: ApiKeyEntry | None = None
        for entry, digest in zip(self.entries, self._digests, strict=True):
            if hmac.compare_digest(presented, digest):
                found = entry
        return found


def load_keys(path: str | Path) -> KeyRing:
    """Read a keys file; problems name the file and field (``keys[1].sha256: ...``), never a value."""
    try:
        # ConfigLoader, not safe_load: a badly tagged value (``!!int <text>``) is a marked error, not a ValueError quoting it.
        raw = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=ConfigLoader) or {}
    except OSError as error:
        raise ConfigError([f"{path}: cannot read: {error.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    except yaml.YAMLError as error:
        raise ConfigError([f"{path}: {describe_yaml_error(error)}"]) from None
    try:
        parsed = _KeyFile.model_validate(raw)
    except ValidationError as error:
        problems = [f"{path}: {problem.field}: {problem.message}" for problem in field_problems(error, whole="(document)")]
        raise ConfigError(problems) from None
    problems = []
    for attribute in ("name", "sha256"):
        first: dict[str, int] = {}
        for index, entry in enumerate(parsed.keys):
            earlier = first.setdefault(getattr(entry, attribute), index)
            if earlier != index:
                problems.append(f"{path}: keys[{index}].{attribute}: same as keys[{earlier}].{attribute}")
    if problems:
        raise ConfigError(problems)
    return KeyRing(parsed.keys)


class ApiKeys:
    """The standalone ``Authenticator``: ``Authorization: Bearer <key>`` looked up in the current key ring.

    ``ring`` is replaced as a whole when the keys file changes, so a request
    sees either the old or the new set, never a mix.
    """

    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring

    async def authenticate(self, request: web.Request) -> Identity | None:
        token = bearer_token(request)
        if token is None:
            return None
        entry = self.ring.match(token)
        if entry is None:
            return None
        return Identity.for_accounts(f"apikey:{entry.name}", entry.accounts)
