"""The SmtpAccount CRD against a real kube-apiserver: accepted, rejected, documented."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailgate.spec import HOST_MESSAGE
from tests.k8s.cluster import ControlPlane, KubectlError
from tests.unit.test_server_host import ACCEPTED as HOSTS_ACCEPTED
from tests.unit.test_server_host import REFUSED as HOSTS_REFUSED

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

VALID: dict[str, Any] = {
    "apiVersion": "mailgate.dev/v1alpha1",
    "kind": "SmtpAccount",
    "metadata": {"name": "valid"},
    "spec": {
        "server": {"host": "smtp.example.com", "port": 587, "tls": "starttls"},
        "auth": {"method": "login", "secretRef": {"name": "creds"}},
        "senders": ["app@example.com"],
    },
}


def _with(path: str, value: Any) -> dict[str, Any]:
    """VALID with one field set (or removed, for value None) by a dotted path."""
    obj = copy.deepcopy(VALID)
    *parents, leaf = path.split(".")
    node = obj
    for part in parents:
        node = node.setdefault(part, {})
    if value is None:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return obj


# (case id, object, text the apiserver's message must contain: the offending field's path)
INVALID = [
    ("port-too-high", _with("spec.server.port", 70000), "spec.server.port"),
    ("port-zero", _with("spec.server.port", 0), "spec.server.port"),
    ("tls-unknown", _with("spec.server.tls", "ssl"), "spec.server.tls"),
    ("host-empty", _with("spec.server.host", ""), "spec.server.host"),
    ("host-with-space", _with("spec.server.host", "smtp example.com"), "spec.server.host"),
    ("host-with-port", _with("spec.server.host", "smtp.example.com:587"), "spec.server.host"),
    ("host-bracketed-ipv6", _with("spec.server.host", "[2001:db8::25]"), "spec.server.host"),
    ("server-missing", _with("spec.server", None), "spec.server"),
    ("auth-method-unknown", _with("spec.auth.method", "cram"), "spec.auth.method"),
    ("secret-ref-missing", _with("spec.auth.secretRef", None), "spec.auth.secretRef"),
    ("max-connections-zero", _with("spec.pool.maxConnections", 0), "spec.pool.maxConnections"),
    ("ttl-zero", _with("spec.pool.ttlSeconds", 0), "spec.pool.ttlSeconds"),
    ("idle-timeout-negative", _with("spec.pool.idleTimeoutSeconds", -5), "spec.pool.idleTimeoutSeconds"),
    (
        "health-check-not-below-ttl",
        _with("spec.pool", {"ttlSeconds": 30, "healthCheckAfterIdleSeconds": 30}),
        "spec.pool.healthCheckAfterIdleSeconds",
    ),
    ("messages-per-connection-zero", _with("spec.pool.maxMessagesPerConnection", 0), "spec.pool.maxMessagesPerConnection"),
    ("acquire-timeout-too-long", _with("spec.pool.acquireTimeoutSeconds", 3600), "spec.pool.acquireTimeoutSeconds"),
    ("rate-zero", _with("spec.rateLimit.messagesPerMinute", 0), "spec.rateLimit.messagesPerMinute"),
    ("sender-no-at", _with("spec.senders", ["billing"]), "spec.senders[0]"),
    ("sender-bad-wildcard", _with("spec.senders", ["ok@example.com", "bill*@example.com"]), "spec.senders[1]"),
    ("sender-no-domain-dot", _with("spec.senders", ["*@localhost"]), "spec.senders[0]"),
    ("service-account-no-namespace", _with("spec.access.serviceAccounts", ["checkout"]), "spec.access.serviceAccounts[0]"),
    ("namespace-uppercase", _with("spec.access.namespaces", ["Shop"]), "spec.access.namespaces[0]"),
    ("message-size-tiny", _with("spec.maxMessageBytes", 10), "spec.maxMessageBytes"),
    ("port-wrong-type", _with("spec.server.port", "587"), "spec.server.port"),
    ("unknown-field", _with("spec.server.hostname", "typo.example.com"), "hostname"),
    ("spec-missing", _with("spec", None), "spec"),
]


def _create(control_plane: ControlPlane, namespace: str, obj: dict[str, Any], *extra: str) -> Any:
    return control_plane.kubectl_json("create", "-n", namespace, "-f", "-", *extra, input=json.dumps(obj))


def test_crd_is_established(control_plane: ControlPlane) -> None:
    crd = control_plane.kubectl_json("get", "crd", "smtpaccounts.mailgate.dev")
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True"
    assert crd["spec"]["names"]["shortNames"] == ["smtpacct"]
    assert crd["spec"]["names"]["categories"] == ["mailgate"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_accepted(control_plane: ControlPlane, path: Path) -> None:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for ns in {doc["metadata"]["namespace"] for doc in docs}:
        if control_plane.get("namespace", ns) is None:
            control_plane.create_namespace(ns)
    text = path.read_text()
    control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=text)
    control_plane.kubectl("apply", "-f", "-", input=text)
    for doc in docs:
        if doc["kind"] == "SmtpAccount":
            stored = control_plane.get("smtpaccount", doc["metadata"]["name"], doc["metadata"]["namespace"])
            assert stored is not None
            assert stored["spec"]["server"]["host"] == doc["spec"]["server"]["host"]


@pytest.mark.parametrize(("case", "obj", "field"), INVALID, ids=[case for case, _, _ in INVALID])
def test_invalid_account_is_rejected_naming_the_field(
    control_plane: ControlPlane, namespace: str, case: str, obj: dict[str, Any], field: str
) -> None:
    obj = copy.deepcopy(obj)
    obj["metadata"]["name"] = case
    with pytest.raises(KubectlError) as rejected:
        _create(control_plane, namespace, obj)
    assert field in rejected.value.stderr, rejected.value.stderr
    assert control_plane.get("smtpaccount", case, namespace) is None


def test_the_apiserver_and_the_model_agree_on_hosts(control_plane: ControlPlane, namespace: str) -> None:
    """The CRD pattern runs in Go's RE2, the model's in Python's ``re``: both accept and refuse the same hosts."""
    accepted: dict[str, Any] = {"apiVersion": "v1", "kind": "List", "items": []}
    for index, host in enumerate(HOSTS_ACCEPTED):
        obj = _with("spec.server.host", host)
        obj["metadata"] = {"name": f"host-{index}", "namespace": namespace}
        accepted["items"].append(obj)
    # Not _create: kubectl prints one JSON object per item of a List, not one document. Any refused item fails the call.
    control_plane.kubectl("create", "-n", namespace, "-f", "-", "--dry-run=server", input=json.dumps(accepted))
    for host in HOSTS_REFUSED:
        with pytest.raises(KubectlError) as rejected:
            _create(control_plane, namespace, _with("spec.server.host", host), "--dry-run=server")
        assert "spec.server.host" in rejected.value.stderr, (host, rejected.value.stderr)
        assert HOST_MESSAGE in rejected.value.stderr and "[0-9A-Fa-f]" not in rejected.value.stderr  # words, not the regex


def test_defaults_are_applied_by_the_apiserver(control_plane: ControlPlane, namespace: str) -> None:
    obj = copy.deepcopy(VALID)
    obj["spec"] = {"server": {"host": "relay.example.com"}}
    created = _create(control_plane, namespace, obj)
    spec = created["spec"]
    assert spec["server"]["tls"] == "starttls"
    assert spec["auth"]["method"] == "none"
    assert spec["pool"] == {
        "maxConnections": 3,
        "ttlSeconds": 300,
        "idleTimeoutSeconds": 60,
        "healthCheckAfterIdleSeconds": 10,
        "maxMessagesPerConnection": 100,
        "acquireTimeoutSeconds": 30,
    }
    assert spec["suspend"] is False


def test_explain_shows_field_descriptions(control_plane: ControlPlane) -> None:
    text = control_plane.kubectl("explain", "smtpaccount.spec.pool").stdout
    assert "maxConnections" in text
    assert "Cluster-wide maximum of concurrent upstream sessions" in text
    assert "healthCheckAfterIdleSeconds" in text


def test_printer_columns(control_plane: ControlPlane, namespace: str) -> None:
    _create(control_plane, namespace, VALID)
    table = control_plane.kubectl("get", "smtpacct", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "SERVER", "READY", "SYNCED", "HEALTHY", "AGE"]
    assert table[1].split()[:2] == ["valid", "smtp.example.com"]
    # The queue's counts (status.delivery, written by the operator) only in the wide view.
    patch = json.dumps({"status": {"delivery": {"queued": 7, "deferred": 3}}})
    control_plane.kubectl("patch", "smtpaccount", "valid", "-n", namespace, "--subresource=status", "--type=merge", "-p", patch)
    wide = control_plane.kubectl("get", "smtpacct", "-n", namespace, "-o", "wide").stdout.splitlines()
    assert wide[0].split()[-2:] == ["QUEUED", "DEFERRED"]
    assert wide[1].split()[-2:] == ["7", "3"]


def test_status_changes_only_through_the_status_subresource(control_plane: ControlPlane, namespace: str) -> None:
    _create(control_plane, namespace, VALID)
    condition = {"type": "Ready", "status": "True", "reason": "Synced", "message": "ok",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"}
    patch = json.dumps({"status": {"observedGeneration": 1, "conditions": [condition]}})
    # A status in a main-resource patch is dropped silently by the apiserver.
    control_plane.kubectl("patch", "smtpaccount", "valid", "-n", namespace, "--type=merge", "-p", patch)
    stored = control_plane.get("smtpaccount", "valid", namespace)
    assert stored is not None
    assert "status" not in stored or not stored.get("status", {}).get("conditions")
    control_plane.kubectl(
        "patch", "smtpaccount", "valid", "-n", namespace, "--subresource=status", "--type=merge", "-p", patch
    )
    stored = control_plane.get("smtpaccount", "valid", namespace)
    assert stored is not None
    assert stored["status"]["conditions"][0]["reason"] == "Synced"
    table = control_plane.kubectl("get", "smtpacct", "valid", "-n", namespace).stdout.splitlines()
    assert table[1].split()[2] == "True"
