"""One set of rules from an account's secretRefs to credentials, in a cluster and in standalone mode (issue 16).

The operator reads Secrets from the apiserver (``data``, base64) and
standalone mode from files; what a missing Secret, a missing or empty key
mean, and the words that say so, are the same: each case below is resolved
by the operator's ``resolve`` and by ``load_snapshot`` and must give the
same problem (standalone mode prefixes the file, document and field, and
names the file the Secret came from).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailgate.operator.credentials import CredentialProblem, Resolved, resolve, secret_values
from mailgate.spec import SmtpAccount
from mailgate.standalone.loader import ConfigError, load_snapshot

LOGIN = {"server": {"host": "h"}, "auth": {"method": "login", "secretRef": {"name": "creds"}}}
XOAUTH2 = {"server": {"host": "h"}, "auth": {"method": "xoauth2", "secretRef": {"name": "creds"}}}
OAUTH2 = {"provider": "generic", "tokenUrl": "https://idp.example/token", "clientId": "c", "mailbox": "box@shop.example"}
CLIENT_CREDENTIAL = {"server": {"host": "h"}, "auth": {"method": "oauth2", "secretRef": {"name": "creds"}, "oauth2": OAUTH2}}
WITH_CLIENT = {**LOGIN, "access": {"smtpClients": [{"secretRef": {"name": "app"}}]}}
GOOD = {"username": "ann", "password": "pw"}
WEBHOOK_KEY = "whsec_" + base64.b64encode(bytes(range(32))).decode()
HOOK = {"url": "https://hooks.example/mail", "secretRef": {"name": "hook"}}
WITH_WEBHOOK = {**LOGIN, "delivery": {"mode": "queue", "webhook": HOOK}}

# (spec, Secrets by name, field the problem is about, reason, message)
CASES: list[tuple[dict[str, Any], dict[str, dict[str, str]], str, str, str]] = [
    (LOGIN, {}, "spec.auth.secretRef", "SecretNotFound", "Secret shop/creds not found (needed for auth method login)"),
    (
        LOGIN,
        {"creds": {"username": "ann"}},
        "spec.auth.secretRef",
        "KeyMissing",
        "Secret shop/creds has no key 'password' (needed for auth method login)",
    ),
    (
        LOGIN,
        {"creds": {"username": "ann", "password": ""}},
        "spec.auth.secretRef",
        "KeyMissing",
        "Secret shop/creds has no key 'password' (needed for auth method login)",
    ),
    (
        XOAUTH2,
        {"creds": GOOD},
        "spec.auth.secretRef",
        "KeyMissing",
        "Secret shop/creds has no key 'token' (needed for auth method xoauth2)",
    ),
    (
        CLIENT_CREDENTIAL,
        {"creds": {"password": "not the key it needs"}},
        "spec.auth.secretRef",
        "KeyMissing",
        "Secret shop/creds has no key 'clientSecret' (needed for auth method oauth2)",
    ),
    (
        WITH_CLIENT,
        {"creds": GOOD},
        "spec.access.smtpClients[0].secretRef",
        "SecretNotFound",
        "Secret shop/app not found (needed for an SMTP client login)",
    ),
    (
        WITH_CLIENT,
        {"creds": GOOD, "app": {"username": "grafana", "password": ""}},
        "spec.access.smtpClients[0].secretRef",
        "KeyMissing",
        "Secret shop/app has no key 'password' (needed for an SMTP client login)",
    ),
    (
        WITH_WEBHOOK,
        {"creds": GOOD},
        "spec.delivery.webhook.secretRef",
        "SecretNotFound",
        "Secret shop/hook not found (needed for webhook signing)",
    ),
    (
        WITH_WEBHOOK,
        {"creds": GOOD, "hook": {"secret": WEBHOOK_KEY}},
        "spec.delivery.webhook.secretRef",
        "KeyMissing",
        "Secret shop/hook has no key 'webhookSecret' (needed for webhook signing)",
    ),
    (
        WITH_WEBHOOK,
        {"creds": GOOD, "hook": {"webhookSecret": "hunter2-not-a-whsec-key"}},
        "spec.delivery.webhook.secretRef",
        "KeyInvalid",
        "Secret shop/hook: key 'webhookSecret': a webhook secret must be 'whsec_' followed by base64",
    ),
]


def operator_resolve(spec: dict[str, Any], secrets: dict[str, dict[str, str]]) -> Resolved | CredentialProblem:
    """As the operator does: the apiserver hands out ``data`` (base64), its cache keeps the decoded keys."""
    cached = {
        ("shop", name): secret_values({key: base64.b64encode(value.encode()).decode() for key, value in data.items()})
        for name, data in secrets.items()
    }
    account = SmtpAccount.model_validate(_account(spec))
    return resolve("shop", account.spec, lambda namespace, name: cached.get((namespace, name)))


def _account(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "mailgate.dev/v1alpha1", "kind": "SmtpAccount", "metadata": {"name": "a", "namespace": "shop"},
            "spec": spec}  # fmt: skip


def write_files(tmp_path: Path, spec: dict[str, Any], secrets: dict[str, dict[str, str]]) -> tuple[Path, Path]:
    accounts, secret_file = tmp_path / "accounts.yaml", tmp_path / "secrets.yaml"
    accounts.write_text(yaml.safe_dump(_account(spec)))
    documents = [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "shop"}, "stringData": data}
        for name, data in secrets.items()
    ]
    secret_file.write_text(yaml.safe_dump_all(documents))
    return accounts, secret_file


@pytest.mark.parametrize(("spec", "secrets", "field", "reason", "message"), CASES)
def test_a_secret_problem_is_the_same_in_both_modes(
    tmp_path: Path, spec: dict[str, Any], secrets: dict[str, dict[str, str]], field: str, reason: str, message: str
) -> None:
    assert operator_resolve(spec, secrets) == CredentialProblem(reason, message)

    accounts, secret_file = write_files(tmp_path, spec, secrets)
    with pytest.raises(ConfigError) as caught:
        load_snapshot([accounts, secret_file])
    [problem] = caught.value.problems
    expected = f"{accounts}: document 1 (SmtpAccount shop/a): {field}: {message}"
    if reason == "SecretNotFound":
        assert problem == expected
    else:  # standalone mode also says which file the Secret is in
        name = {"spec.auth.secretRef": "creds", "spec.delivery.webhook.secretRef": "hook"}.get(field, "app")
        index = list(secrets).index(name) + 1
        assert problem == f"{expected}; see {secret_file}: document {index} (Secret shop/{name})"


def test_every_missing_key_is_reported_in_standalone_mode_and_the_first_by_the_operator(tmp_path: Path) -> None:
    first = "Secret shop/creds has no key 'username' (needed for auth method login)"
    assert operator_resolve(LOGIN, {"creds": {}}) == CredentialProblem("KeyMissing", first)
    accounts, secret_file = write_files(tmp_path, LOGIN, {"creds": {}})
    with pytest.raises(ConfigError) as caught:
        load_snapshot([accounts, secret_file])
    origin = f"{accounts}: document 1 (SmtpAccount shop/a): spec.auth.secretRef: "
    see = f"; see {secret_file}: document 1 (Secret shop/creds)"
    assert caught.value.problems == [
        f"{origin}{first}{see}",
        f"{origin}Secret shop/creds has no key 'password' (needed for auth method login){see}",
    ]


def test_resolved_credentials_are_the_same_in_both_modes(tmp_path: Path) -> None:
    secrets = {"creds": GOOD, "app": {"username": "grafana", "password": "s3cret"}}
    resolved = operator_resolve(WITH_CLIENT, secrets)
    assert isinstance(resolved, Resolved)
    [config] = load_snapshot(write_files(tmp_path, WITH_CLIENT, secrets)).accounts
    assert config.credentials == resolved.credentials
    assert [client.username for client in config.smtp_clients] == [username for username, _ in resolved.client_logins]
    assert "s3cret" not in repr(resolved)  # a login waiting to be hashed is not shown either


def test_a_data_value_that_is_not_base64_is_a_problem_in_both_modes_not_a_crash(tmp_path: Path) -> None:
    """Non-ASCII text under ``data`` made base64 raise ValueError, which standalone mode did not catch."""
    assert secret_values({"username": "YW5u", "password": "pässword"}) == {"username": "ann", "password": None}
    cached = {"username": "ann", "password": None}
    problem = resolve("shop", SmtpAccount.model_validate(_account(LOGIN)).spec, lambda namespace, name: cached)
    assert problem == CredentialProblem("KeyInvalid", "Secret shop/creds: key 'password' is not UTF-8 text")

    accounts = tmp_path / "accounts.yaml"
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", "namespace": "shop"}}
    accounts.write_text(yaml.safe_dump_all([_account(LOGIN), {**secret, "data": {"password": "pässword"}}]))
    with pytest.raises(ConfigError) as caught:
        load_snapshot([accounts])
    assert (
        f"{accounts}: document 2 (Secret shop/creds): data.password: not valid base64-encoded UTF-8 " in caught.value.problems[0]
    )


def test_a_webhook_signing_key_resolves_the_same_in_both_modes_and_never_shows(tmp_path: Path) -> None:
    secrets = {"creds": GOOD, "hook": {"webhookSecret": WEBHOOK_KEY}}
    resolved = operator_resolve(WITH_WEBHOOK, secrets)
    assert isinstance(resolved, Resolved) and resolved.credentials.webhook_secret is not None
    assert resolved.credentials.webhook_secret.get_secret_value() == WEBHOOK_KEY
    assert WEBHOOK_KEY not in repr(resolved)
    [config] = load_snapshot(write_files(tmp_path, WITH_WEBHOOK, secrets)).accounts
    assert config.credentials == resolved.credentials
