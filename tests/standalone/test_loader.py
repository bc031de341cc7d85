"""Loading the YAML `kubectl apply -f` takes: accounts, Secrets, and errors that say where."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import pytest
import yaml

from mailgate.password_cache import PasswordHashes
from mailgate.standalone.loader import ConfigError, load_snapshot

ACCOUNT = """\
apiVersion: mailgate.dev/v1alpha1
kind: SmtpAccount
metadata: {{name: {name}, namespace: shop}}
spec:
  server: {{host: smtp.example.com, port: {port}, tls: starttls}}
  auth: {{method: {method}, secretRef: {{name: {secret}}}}}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def account(name: str = "billing", port: int = 587, method: str = "login", secret: str = "billing-smtp") -> str:
    return ACCOUNT.format(name=name, port=port, method=method, secret=secret)


def problems_of(paths: list[Path]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_snapshot(paths)
    return caught.value.problems


def test_account_and_secret_resolve_into_credentials(tmp_path: Path) -> None:
    password = "pässword with spaces"
    secret = f"""\
apiVersion: v1
kind: Secret
metadata: {{name: billing-smtp, namespace: shop}}
data:
  username: {base64.b64encode(b"billing@shop.example").decode()}
  password: {base64.b64encode(password.encode()).decode()}
"""
    accounts = write(tmp_path, "accounts.yaml", account() + "---\n" + account("oauth", method="xoauth2", secret="o365"))
    secrets = write(
        tmp_path,
        "secrets.yaml",
        secret + "---\napiVersion: v1\nkind: Secret\nmetadata: {name: o365, namespace: shop}\n"
        "data: {username: " + base64.b64encode(b"old").decode() + "}\nstringData: {username: robot@shop.example, token: tok}\n",
    )

    snapshot = load_snapshot([accounts, secrets], revision=7)

    assert snapshot.revision == 7
    by_key = {config.key: config for config in snapshot.accounts}
    assert sorted(by_key) == ["shop/billing", "shop/oauth"]
    billing = by_key["shop/billing"].credentials
    assert billing.username == "billing@shop.example"
    assert billing.password is not None and billing.password.get_secret_value() == password
    assert billing.token is None
    oauth = by_key["shop/oauth"].credentials
    assert oauth.username == "robot@shop.example"  # stringData wins over data, as in Kubernetes
    assert oauth.token is not None and oauth.token.get_secret_value() == "tok"
    assert oauth.password is None
    assert by_key["shop/billing"].spec.server.port == 587
    assert password not in repr(snapshot)


def test_auth_none_needs_no_secret_and_namespace_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "relay.yaml",
        "apiVersion: mailgate.dev/v1alpha1\nkind: SmtpAccount\nmetadata: {name: relay}\n"
        "spec: {server: {host: relay.example, tls: none}}\n",
    )
    snapshot = load_snapshot([path])
    assert [config.key for config in snapshot.accounts] == ["default/relay"]
    assert snapshot.accounts[0].credentials.username is None


def test_every_problem_names_file_document_and_field(tmp_path: Path) -> None:
    text = "\n---\n".join(
        [
            account("ok", method="none"),
            account("billing", port=70000, method="none"),
            "apiVersion: mailgate.dev/v1alpha1\nkind: SmtpAccount\nmetadata: {name: bad, namespace: shop}\n"
            "spec:\n  server: {host: h, tls: sometimes}\n  pool: {maxConnections: 0}\n  colour: blue\n",
            "apiVersion: mailgate.dev/v1alpha1\nkind: SmtpAccount\nmetadata: {namespace: shop}\nspec: {}\n",
            "- just\n- a list\n",
        ]
    )
    path = write(tmp_path, "accounts.yaml", text)

    problems = problems_of([path])

    second, third = f"{path}: document 2 (SmtpAccount shop/billing)", f"{path}: document 3 (SmtpAccount shop/bad)"
    assert f"{second}: spec.server.port: Input should be less than or equal to 65535" in problems
    assert any(p.startswith(f"{third}: spec.server.tls: Input should be") for p in problems)
    assert any(p.startswith(f"{third}: spec.pool.maxConnections: Input should be greater") for p in problems)
    assert f"{third}: spec.colour: Extra inputs are not permitted" in problems
    assert f"{path}: document 4 (SmtpAccount): metadata.name: Field required" in problems
    assert f"{path}: document 4 (SmtpAccount): spec.server: Field required" in problems
    assert any(p.startswith(f"{path}: document 5: expected a mapping") for p in problems)
    assert not any("document 1 " in p for p in problems)


def test_yaml_syntax_error_gives_position_but_never_the_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "secrets.yaml",
        account(method="none") + "---\napiVersion: v1\nkind: Secret\nstringData:\n  password: hunter2: sentinel-secret\n",
    )
    [problem] = problems_of([path])
    assert problem.startswith(f"{path}: document 2: invalid YAML: line 11, column")
    assert "sentinel-secret" not in problem and "hunter2" not in problem


def test_missing_secret_and_missing_key_name_both_sides(tmp_path: Path) -> None:
    accounts = write(tmp_path, "accounts.yaml", account() + "---\n" + account("other", secret="other-smtp"))
    secrets = write(
        tmp_path,
        "secrets.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: billing-smtp, namespace: shop}\nstringData: {username: u}\n"
        "---\napiVersion: v1\nkind: Secret\nmetadata: {name: other-smtp, namespace: elsewhere}\n"
        "stringData: {username: u, password: p}\n",
    )

    problems = problems_of([accounts, secrets])

    assert problems == [
        f"{accounts}: document 1 (SmtpAccount shop/billing): spec.auth.secretRef: Secret shop/billing-smtp "
        "has no key 'password' (needed for auth method login); "
        f"see {secrets}: document 1 (Secret shop/billing-smtp)",
        f"{accounts}: document 2 (SmtpAccount shop/other): spec.auth.secretRef: "
        "Secret shop/other-smtp not found (needed for auth method login)",
    ]


def test_secret_problems_never_show_values(tmp_path: Path) -> None:
    accounts = write(tmp_path, "accounts.yaml", account())
    secrets = write(
        tmp_path,
        "secrets.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: billing-smtp, namespace: shop}\n"
        "data: {username: dXNlcg==, password: 'sentinel-not-base64!'}\n",
    )
    problems = problems_of([accounts, secrets])
    assert (
        f"{secrets}: document 1 (Secret shop/billing-smtp): data.password: "
        "not valid base64-encoded UTF-8 (put plain text under stringData)"
    ) in problems
    assert not any("sentinel" in problem for problem in problems)


def test_login_without_secret_ref_is_an_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "a.yaml",
        "apiVersion: mailgate.dev/v1alpha1\nkind: SmtpAccount\nmetadata: {name: billing, namespace: shop}\n"
        "spec: {server: {host: h}, auth: {method: login}}\n",
    )
    assert problems_of([path]) == [
        f"{path}: document 1 (SmtpAccount shop/billing): spec.auth: secretRef is required unless method is none",
    ]


def test_duplicate_accounts_are_errors(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", account(method="none"))
    second = write(tmp_path, "b.yaml", account(method="none"))
    assert problems_of([first, second]) == [
        f"{second}: document 1 (SmtpAccount shop/billing): duplicate SmtpAccount shop/billing, "
        f"first defined in {first}: document 1 (SmtpAccount shop/billing)",
    ]


def test_unknown_kinds_are_ignored_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(
        tmp_path,
        "bundle.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n"
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec: {replicas: 1}\n---\n"
        + account(method="none"),
    )
    with caplog.at_level(logging.WARNING, logger="mailgate.standalone.loader"):
        snapshot = load_snapshot([path])
    assert [config.key for config in snapshot.accounts] == ["shop/billing"]
    warnings = [record.getMessage() for record in caplog.records]
    assert any("document 1 (Namespace default/shop): ignored" in message for message in warnings)
    assert any("document 2 (Deployment shop/web): ignored" in message for message in warnings)


def test_kubectl_list_output_is_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "list.yaml",
        "apiVersion: v1\nkind: List\nitems:\n"
        "- apiVersion: mailgate.dev/v1alpha1\n  kind: SmtpAccount\n  metadata: {name: a, namespace: shop}\n"
        "  spec: {server: {host: h, port: 0}}\n",
    )
    [problem] = problems_of([path])
    assert problem.startswith(f"{path}: document 1 (List item 1: SmtpAccount shop/a): spec.server.port: Input should be greater")


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert problems_of([missing]) == [f"{missing}: cannot read: No such file or directory"]


def test_smtp_client_logins_are_hashed_stably_and_unique(tmp_path: Path) -> None:
    from mailgate.passwords import verify_password

    def with_clients(name: str, *secrets: str) -> str:
        refs = ", ".join(f"{{secretRef: {{name: {secret}}}}}" for secret in secrets)
        return account(name, method="none") + f"  access: {{smtpClients: [{refs}]}}\n"

    secrets = "".join(
        f"---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: shop}}\n"
        f"stringData: {{username: {user}, password: {password}}}\n"
        for name, user, password in [("app", "grafana", "sentinel-pw"), ("other", "keycloak", "pw2")]
    )
    path = write(tmp_path, "accounts.yaml", with_clients("billing", "app") + secrets)

    hashes = PasswordHashes()  # what ConfigFiles keeps from load to load
    first, second = load_snapshot([path], hashes=hashes), load_snapshot([path], hashes=hashes)

    [client] = first.accounts[0].smtp_clients
    assert client.username == "grafana"
    assert verify_password("sentinel-pw", client.password_hash)
    assert "sentinel-pw" not in first.model_dump_json()
    assert first.accounts == second.accounts  # an unchanged file reloads into an equal snapshot

    path.write_text(with_clients("billing", "app") + "---\n" + with_clients("news", "other", "app") + secrets)
    assert problems_of([path]) == [
        f"{path}: document 2 (SmtpAccount shop/news): spec.access.smtpClients: "
        "SMTP login 'grafana' is also used by SmtpAccount shop/billing"
    ]


def test_the_shipped_examples_load() -> None:
    from mailgate.gateway.apikeys import load_keys

    examples = Path(__file__).resolve().parents[2] / "examples"
    snapshot = load_snapshot([examples / "standalone" / "accounts.yaml"])
    assert [config.key for config in snapshot.accounts] == ["dev/mailpit", "shop/billing"]
    assert snapshot.accounts[1].credentials.username == "billing@shop.example"
    assert [entry.name for entry in load_keys(examples / "standalone" / "api-keys.yaml").entries] == ["example"]
    # The cluster examples are the same format: standalone mode reads them unchanged (those holding key
    # material once real keys replace their placeholders: tests/unit/test_examples.py).
    keyed = {"google-workspace.yaml", "office365-certificate.yaml"}
    assert len(load_snapshot(sorted(p for p in examples.glob("*.yaml") if p.name not in keyed)).accounts) >= 3


@pytest.mark.parametrize(
    "tagged", ["!!int sentinel-secret", "!!bool sentinel-secret", "!!timestamp 2020-13-45", "!!float sentinel"]
)
def test_explicit_tag_that_does_not_fit_its_value_is_a_yaml_problem_without_the_value(tmp_path: Path, tagged: str) -> None:
    # int('sentinel-secret') raised ValueError quoting the value: the load crashed and the value reached
    # the traceback (and the log, on a reload).
    path = write(
        tmp_path,
        "secrets.yaml",
        account(method="none") + "---\napiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: shop}\n"
        f"stringData:\n  password: {tagged}\n",
    )
    [problem] = problems_of([path])
    tag = tagged.split()[0]
    assert problem == f"{path}: document 2: invalid YAML: line 12, column 13: expected a valid {tag} value"
    assert "sentinel" not in problem and "2020" not in problem


def test_scalars_keep_their_yaml_types(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "relay.yaml",
        "apiVersion: mailgate.dev/v1alpha1\nkind: SmtpAccount\nmetadata: {name: relay, namespace: shop}\n"
        "spec: {server: {host: relay.example, port: 2525, tls: none, verifyCertificate: false}, suspend: yes}\n---\n"
        "apiVersion: mailgate.dev/v1alpha1\nkind: SmtpAccount\nmetadata: {name: quoted, namespace: shop}\n"
        "spec: {server: {host: relay.example, port: '2526', tls: none}}\n",
    )
    quoted, relay = load_snapshot([path]).accounts  # sorted by key
    assert (relay.spec.server.port, relay.spec.server.verify_certificate, relay.spec.suspend) == (2525, False, True)
    # A quoted number reaches pydantic as a string, and its lax mode takes it for an integer field (the
    # apiserver would refuse it): documented in the loader's docstring, kept as it was.
    assert quoted.spec.server.port == 2526

    # An unquoted number is an int where a string is needed: refused, as the apiserver refuses it.
    numbers = write(
        tmp_path,
        "numbers.yaml",
        "apiVersion: mailgate.dev/v1alpha1\nkind: SmtpAccount\nmetadata: {name: 12345, namespace: shop}\n"
        "spec: {server: {host: relay.example, tls: none}}\n---\n"
        "apiVersion: v1\nkind: Secret\nmetadata: {name: pins, namespace: shop}\nstringData: {pin: 12345}\n",
    )
    assert problems_of([numbers]) == [
        f"{numbers}: document 1 (SmtpAccount): metadata.name: Input should be a valid string",
        f"{numbers}: document 2 (Secret shop/pins): stringData.pin: expected a string",
    ]


def test_anchors_aliases_and_merge_keys_are_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "list.yaml",
        "apiVersion: v1\nkind: List\nitems:\n"
        "- apiVersion: mailgate.dev/v1alpha1\n  kind: SmtpAccount\n  metadata: {name: a, namespace: shop}\n"
        "  spec: &spec\n    server: {host: smtp.example.com, tls: none}\n"
        "    pool: &pool {maxConnections: 2, ttlSeconds: 60, healthCheckAfterIdleSeconds: 5}\n"
        "- apiVersion: mailgate.dev/v1alpha1\n  kind: SmtpAccount\n  metadata: {name: b, namespace: shop}\n"
        "  spec:\n    <<: *spec\n    pool: {<<: *pool, maxConnections: 5}\n",
    )
    a, b = load_snapshot([path]).accounts
    assert (a.spec.pool.max_connections, a.spec.pool.ttl_seconds) == (2, 60)
    assert b.spec.server == a.spec.server
    assert (b.spec.pool.max_connections, b.spec.pool.ttl_seconds) == (5, 60)


YAML_FEATURES = r"""
plain: {a: 1, b: [x, 2.5, null, true, yes, off, 2020-01-02, 2020-01-02T03:04:05Z, 0x1f, 0o17, 1_000, 1:30, .inf, ~, '']}
tagged: [!!str 7, !!binary aGVsbG8=, !!int "42", !!float 1, !!map {a: !!seq [1]}]
keys: {1: one, true: t, null: nothing, 2.5: x, 2020-01-01: d}
duplicate: {a: 1, a: 2}
nested: [[[]], {}, [{}]]
block: |
  line one
folded: >-
  a
  b
---
anchors: &base {host: h, port: 25}
again: *base
scalar_alias: [&s x, *s]
merged: {<<: *base, port: 587}
merged_list: {<<: [*base, {tls: none}]}
set: !!set {a, b}
omap: !!omap [{a: 1}, {b: 2}]
pairs: !!pairs [{a: 1}, {a: 2}]
---
~
---
just a string
---
=: value key
"""


def test_config_loader_reads_what_pyyamls_safe_loader_reads() -> None:
    # ConfigLoader builds plain documents itself and leaves every other one to PyYAML: same result either way.
    from mailgate.standalone.loader import ConfigLoader

    expected = list(yaml.load_all(YAML_FEATURES, Loader=yaml.CSafeLoader))
    assert list(yaml.load_all(YAML_FEATURES, Loader=ConfigLoader)) == expected
    assert expected[0]["tagged"][2] == 42 and expected[1]["merged"] == {"host": "h", "port": 587}

    nested = yaml.load("[" * 990 + "]" * 990, Loader=ConfigLoader)  # deeper than the fast walk goes: PyYAML builds it
    depth = 1
    while nested:
        nested, depth = nested[0], depth + 1
    assert depth == 990

    for broken in ["a: {[1]: 2}", "a: !custom x", "<<: 1", "a: !!set [1]", "x: &a [1]\ny: {<<: *a}", "a: b: c"]:
        with pytest.raises(yaml.YAMLError) as theirs:
            list(yaml.load_all(broken, Loader=yaml.CSafeLoader))
        with pytest.raises(yaml.YAMLError) as ours:
            list(yaml.load_all(broken, Loader=ConfigLoader))
        assert str(ours.value) == str(theirs.value)
