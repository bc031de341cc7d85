"""The example files and docs/oauth2.md's objects are accepted by the model and load in standalone mode.

Why: users copy these files. A typo in a field name, a Secret key the account
does not read or a Secret in the wrong namespace should fail here, in a
second and without a cluster (tests/k8s/test_examples.py asks the apiserver
too). The examples carry placeholders for key material, which no grant can
load; ``with_real_keys`` swaps them for freshly generated keys, so everything
else in the file is tested exactly as written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailgate.oauth2.config import CERTIFICATE, PRIVATE_KEY, SERVICE_ACCOUNT_KEY, client_authentication, secret_keys
from mailgate.spec import AuthMethod, SmtpAccount
from mailgate.standalone.loader import load_snapshot
from tests.oauth2_server import CertificateCredential, certificate_credential

ROOT = Path(__file__).resolve().parents[2]
# Kubernetes objects only: examples/standalone/api-keys.yaml is a mailgate keys file, not for the apiserver.
EXAMPLE_FILES = [*sorted((ROOT / "examples").glob("*.yaml")), ROOT / "examples" / "standalone" / "accounts.yaml"]
OAUTH2_DOC = ROOT / "docs" / "oauth2.md"
PLACEHOLDER = "replace-with-"


def documents(path: Path) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def doc_objects(path: Path = OAUTH2_DOC) -> list[dict[str, Any]]:
    """Every complete Kubernetes object in the ```yaml blocks of a Markdown page (fragments are skipped)."""
    blocks = re.findall(r"^```yaml\n(.*?)^```", path.read_text(), flags=re.M | re.S)
    return [
        doc
        for block in blocks
        for doc in yaml.safe_load_all(block)
        if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc
    ]


@cache
def _key_and_certificate() -> CertificateCredential:
    """An RSA key and a self-signed certificate for it, as `openssl req -x509 -newkey rsa:2048 -nodes` makes them."""
    return certificate_credential("rsa")


def private_key_pem() -> str:
    return _key_and_certificate().private_key_pem


def certificate_pem() -> str:
    return _key_and_certificate().certificate_pem


def _real_value(key: str, value: str) -> str:
    """``value``, or generated key material in its place when it is a placeholder for some."""
    if PLACEHOLDER not in value:
        return value
    if key == PRIVATE_KEY:
        return private_key_pem()
    if key == CERTIFICATE:
        return certificate_pem()
    if key == SERVICE_ACCOUNT_KEY:  # keep the example's JSON, with a usable private_key
        return json.dumps({**json.loads(value), "private_key": private_key_pem()})
    return value


def with_real_keys(doc: dict[str, Any]) -> dict[str, Any]:
    """A Secret with its key-material placeholders replaced by generated keys; any other document unchanged."""
    if doc.get("kind") != "Secret" or "stringData" not in doc:
        return doc
    return {**doc, "stringData": {key: _real_value(key, value) for key, value in doc["stringData"].items()}}


def _accounts(docs: list[dict[str, Any]]) -> Iterator[SmtpAccount]:
    for doc in docs:
        if doc.get("kind") == "SmtpAccount":
            yield SmtpAccount.model_validate(doc)


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.relative_to(ROOT / "examples").as_posix())
def test_every_smtp_account_in_the_examples_validates(path: Path) -> None:
    accounts = list(_accounts(documents(path)))
    assert accounts, f"{path.name} has no SmtpAccount"


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.relative_to(ROOT / "examples").as_posix())
def test_every_example_loads_in_standalone_mode(path: Path, tmp_path: Path) -> None:
    """`mailgate serve -f` takes the file (its Secrets, keys and namespaces) once real keys replace the placeholders."""
    docs = [with_real_keys(doc) for doc in documents(path)]
    copy = tmp_path / path.name
    copy.write_text(yaml.safe_dump_all(docs))
    snapshot = load_snapshot([copy])
    loaded = {config.key: config for config in snapshot.accounts}
    expected = {account.key: account for account in _accounts(docs)}
    assert loaded.keys() == expected.keys()
    for key, account in expected.items():
        auth = account.spec.auth
        credentials = loaded[key].credentials
        if auth.method is AuthMethod.oauth2:
            assert auth.oauth2 is not None and credentials.oauth2_secret is not None
            assert credentials.username == auth.oauth2.mailbox
            assert sorted(credentials.oauth2_secret) == sorted(secret_keys(auth))


def test_the_examples_cover_every_oauth2_provider_and_client_authentication() -> None:
    """One example per way of getting tokens, so none of them goes undocumented (or untested above)."""
    ways = set()
    for path in EXAMPLE_FILES:
        for account in _accounts(documents(path)):
            oauth2 = account.spec.auth.oauth2
            if oauth2 is not None:
                method = client_authentication(oauth2)
                ways.add((oauth2.provider.value, method.value if method is not None else None))
    assert ways >= {
        ("microsoft", "clientSecretPost"),
        ("microsoft", "certificate"),
        ("google", None),
        ("generic", "clientSecretBasic"),
    }
    methods = {account.spec.auth.method for path in EXAMPLE_FILES for account in _accounts(documents(path))}
    assert AuthMethod.xoauth2 in methods  # the static-token example


def test_every_smtp_account_in_the_oauth2_doc_validates() -> None:
    names = [account.key for account in _accounts(doc_objects())]
    assert names == ["shop/billing", "shop/orders", "helpdesk/support"]


def test_the_oauth2_doc_secret_and_account_load_in_standalone_mode(tmp_path: Path) -> None:
    """The page's complete client-secret example (Secret and SmtpAccount) is a working `mailgate serve` file."""
    copy = tmp_path / "doc.yaml"
    wanted = {("Secret", "billing-o365"), ("SmtpAccount", "billing")}
    copy.write_text(yaml.safe_dump_all([doc for doc in doc_objects() if (doc["kind"], doc["metadata"]["name"]) in wanted]))
    snapshot = load_snapshot([copy])
    assert [config.key for config in snapshot.accounts] == ["shop/billing"]
