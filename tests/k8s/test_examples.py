"""The examples and docs/oauth2.md's objects against the real apiserver with the CRD installed.

Every document is sent as `kubectl apply --dry-run=server` would send it: the
apiserver runs the CRD's schema, its CEL rules and strict field validation,
and Secret validation (a ``kubernetes.io/tls`` Secret must have ``tls.crt``
and ``tls.key``), without storing anything. What comes back must still hold
every field the document set, so nothing was pruned as unknown. The Secret
commands docs/oauth2.md gives (`kubectl create secret tls`, `kubectl create
secret generic --from-file=serviceAccountKey=...`) are run too, and what they
make goes through the operator's own Secret decoding and credential
resolution into a grant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mailgate.oauth2.config import grant_for
from mailgate.operator.credentials import Resolved, resolve, secret_values
from mailgate.secretrefs import SecretValues
from mailgate.spec import SmtpAccount
from tests.k8s.cluster import ControlPlane
from tests.unit.test_examples import EXAMPLE_FILES, ROOT, certificate_pem, doc_objects, documents, private_key_pem


def _ensure_namespaces(control_plane: ControlPlane, docs: list[dict[str, Any]]) -> None:
    """The examples name their namespaces; a namespaced dry run needs them to exist (they are left for test_crd)."""
    for namespace in {doc["metadata"].get("namespace", "default") for doc in docs}:
        if control_plane.get("namespace", namespace) is None:
            control_plane.create_namespace(namespace)


def _contains(stored: Any, written: Any, path: str = "") -> list[str]:
    """Where ``stored`` lost or changed something ``written`` set (the apiserver may add defaults, never drop)."""
    if isinstance(written, dict):
        if not isinstance(stored, dict):
            return [path or "."]
        return [miss for key, value in written.items() for miss in _contains(stored.get(key), value, f"{path}.{key}")]
    return [] if stored == written else [path]


def _dry_run(control_plane: ControlPlane, doc: dict[str, Any]) -> dict[str, Any]:
    result = control_plane.kubectl_json("apply", "--dry-run=server", "-f", "-", input=json.dumps(doc))
    assert isinstance(result, dict)
    return result


def _check_accepted(control_plane: ControlPlane, docs: list[dict[str, Any]]) -> None:
    _ensure_namespaces(control_plane, docs)
    for doc in docs:
        name = f"{doc['kind']} {doc['metadata']['name']}"
        result = _dry_run(control_plane, doc)
        if doc["kind"] == "Secret":
            assert result.get("type", "Opaque") == doc.get("type", "Opaque"), name
            assert sorted(result["data"]) == sorted(doc.get("stringData", {}) | doc.get("data", {})), name
        else:
            lost = _contains(result["spec"], doc["spec"])
            assert not lost, f"{name}: the apiserver dropped or changed {lost}"


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.relative_to(ROOT / "examples").as_posix())
def test_every_example_document_is_accepted(control_plane: ControlPlane, path: Path) -> None:
    _check_accepted(control_plane, documents(path))


def test_every_object_in_the_oauth2_doc_is_accepted(control_plane: ControlPlane) -> None:
    objects = doc_objects()
    assert {doc["kind"] for doc in objects} == {"Secret", "SmtpAccount"}
    _check_accepted(control_plane, objects)


def _account(path: str) -> SmtpAccount:
    return next(SmtpAccount.model_validate(d) for d in documents(ROOT / path) if d["kind"] == "SmtpAccount")


def _grant_from_created_secret(control_plane: ControlPlane, namespace: str, account: SmtpAccount, *create: str) -> None:
    """Run a documented `kubectl create secret ...`, then resolve the account from it as the operator does."""
    secret = control_plane.kubectl_json("create", "secret", *create, "-n", namespace, "--dry-run=server")
    assert account.spec.auth.secret_ref is not None and account.spec.auth.oauth2 is not None
    assert secret["metadata"]["name"] == account.spec.auth.secret_ref.name

    def lookup(ns: str, name: str) -> SecretValues | None:
        return secret_values(secret["data"]) if (ns, name) == (namespace, secret["metadata"]["name"]) else None

    resolved = resolve(namespace, account.spec, lookup)
    assert isinstance(resolved, Resolved), resolved
    assert resolved.credentials.oauth2_secret is not None
    values = {key: value.get_secret_value() for key, value in resolved.credentials.oauth2_secret.items()}
    grant_for(account.spec.auth.oauth2, values)  # raises GrantError for key material that cannot sign


def test_the_documented_kubectl_create_secret_tls_makes_what_the_certificate_account_reads(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    (tmp_path / "mailgate.crt").write_text(certificate_pem())
    (tmp_path / "mailgate.key").write_text(private_key_pem())
    _grant_from_created_secret(
        control_plane, namespace, _account("examples/office365-certificate.yaml"),
        "tls", "orders-o365-cert", f"--cert={tmp_path / 'mailgate.crt'}", f"--key={tmp_path / 'mailgate.key'}",
    )  # fmt: skip


def test_the_documented_kubectl_create_secret_from_a_json_key_makes_what_the_google_account_reads(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    key = {
        "type": "service_account",
        "private_key_id": "0" * 40,
        "private_key": private_key_pem(),
        "client_email": "mailgate@example-project.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    (tmp_path / "key.json").write_text(json.dumps(key))
    _grant_from_created_secret(
        control_plane, namespace, _account("examples/google-workspace.yaml"),
        "generic", "support-google", f"--from-file=serviceAccountKey={tmp_path / 'key.json'}",
    )  # fmt: skip
