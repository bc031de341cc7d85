"""The test control plane behaves like a real cluster in the ways mailgate relies on."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.k8s.cluster import K8S_VERSION, ControlPlane, wait_for


def test_apiserver_reports_built_version(control_plane: ControlPlane) -> None:
    """Version stamps matter: kubectl and helm refuse or warn on v0.0.0."""
    version = control_plane.kubectl_json("version")
    assert version["serverVersion"]["gitVersion"] == K8S_VERSION
    assert version["clientVersion"]["gitVersion"] == K8S_VERSION


def test_namespace_gets_default_service_account(control_plane: ControlPlane, namespace: str) -> None:
    """Proves the controller-manager runs (serviceaccount controller)."""
    sa = control_plane.wait_for_service_account(namespace, "default", timeout=30)
    assert sa["metadata"]["namespace"] == namespace


def test_deleted_namespace_disappears(control_plane: ControlPlane) -> None:
    """The namespace controller finalizes deletions; without it they hang in Terminating."""
    control_plane.create_namespace("t-gone")
    control_plane.delete_namespace("t-gone")
    wait_for(
        lambda: control_plane.get("namespace", "t-gone") is None,
        timeout=60,
        what="namespace t-gone to be deleted",
    )


def test_token_with_mailgate_audience_passes_token_review(control_plane: ControlPlane, namespace: str) -> None:
    """The gateway authenticates callers by reviewing their projected SA tokens."""
    control_plane.create_service_account(namespace, "app")
    token = control_plane.token(namespace, "app", audience="mailgate")

    status = control_plane.token_review(token, audiences=["mailgate"])
    assert status.get("authenticated") is True, status
    assert status["user"]["username"] == f"system:serviceaccount:{namespace}:app"
    assert "mailgate" in status["audiences"]

    wrong_audience = control_plane.token_review(token, audiences=["https://kubernetes.default.svc"])
    assert not wrong_audience.get("authenticated"), wrong_audience


def test_garbage_token_is_not_authenticated(control_plane: ControlPlane) -> None:
    status = control_plane.token_review("not-a-token", audiences=["mailgate"])
    assert not status.get("authenticated"), status


def test_registered_pods_listed_by_label_with_ip_and_readiness(control_plane: ControlPlane, namespace: str) -> None:
    """Gateway discovery reads exactly these fields; no kubelet exists to set them."""
    labels = {"app.kubernetes.io/name": "mailgate-gateway"}
    control_plane.register_pod(namespace, "gw-0", "127.0.0.11", labels)
    control_plane.register_pod(namespace, "gw-1", "127.0.0.12", labels, ready=False)
    control_plane.register_pod(namespace, "other", "127.0.0.13", {"app": "other"})

    def listed() -> dict[str, tuple[str, str]]:
        pods = control_plane.kubectl_json("get", "pods", "-n", namespace, "-l", "app.kubernetes.io/name=mailgate-gateway")[
            "items"
        ]
        return {p["metadata"]["name"]: (p["status"]["podIP"], _ready(p)) for p in pods}

    assert listed() == {"gw-0": ("127.0.0.11", "True"), "gw-1": ("127.0.0.12", "False")}

    control_plane.set_pod_ready(namespace, "gw-1", True)
    control_plane.set_pod_ready(namespace, "gw-0", False)
    assert listed() == {"gw-0": ("127.0.0.11", "False"), "gw-1": ("127.0.0.12", "True")}

    control_plane.delete_pod(namespace, "gw-0")
    wait_for(lambda: set(listed()) == {"gw-1"}, timeout=10, what="gw-0 to be deleted")


def _ready(pod: dict) -> str:
    return next(c["status"] for c in pod["status"]["conditions"] if c["type"] == "Ready")


def test_fresh_service_account_has_no_rights_until_bound(control_plane: ControlPlane, namespace: str) -> None:
    """RBAC is on: the gateway's and operator's Roles are what grants access."""
    control_plane.create_service_account(namespace, "app")
    user = f"--as=system:serviceaccount:{namespace}:app"

    def can_get_secrets() -> str:
        result = control_plane.kubectl("auth", "can-i", "get", "secrets", user, "-n", namespace, check=False)
        return result.stdout.strip()

    assert can_get_secrets() == "no"

    control_plane.apply(
        [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "read-secrets", "namespace": namespace},
                "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "read-secrets", "namespace": namespace},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "read-secrets",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "app", "namespace": namespace}],
            },
        ]
    )
    assert can_get_secrets() == "yes"


def test_secret_round_trip(control_plane: ControlPlane, namespace: str) -> None:
    control_plane.create_secret(namespace, "creds", {"username": "u", "password": "p@ss"})
    secret = control_plane.get("secret", "creds", namespace)
    assert secret is not None
    assert secret["data"] == {"username": "dQ==", "password": "cEBzcw=="}


CRD_YAML = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.test.mailgate.dev
spec:
  group: test.mailgate.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
    - name: v1
      served: true
      storage: true
      subresources: {status: {}}
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                port: {type: integer, minimum: 1, maximum: 65535}
"""


def test_install_crds_serves_and_validates(control_plane: ControlPlane, namespace: str, tmp_path: Path) -> None:
    """install_crds returns only once the new resource can be used right away."""
    (tmp_path / "widget.yaml").write_text(CRD_YAML)
    (tmp_path / "notes.txt").write_text("not a manifest")
    assert control_plane.install_crds(tmp_path) == ["widgets.test.mailgate.dev"]

    widget = {"apiVersion": "test.mailgate.dev/v1", "kind": "Widget"}
    meta = {"namespace": namespace}
    control_plane.apply({**widget, "metadata": {**meta, "name": "ok"}, "spec": {"port": 25}})
    bad = {**widget, "metadata": {**meta, "name": "bad"}, "spec": {"port": 70000}}
    result = control_plane.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
    assert result.returncode != 0
    assert "spec.port" in result.stderr


def test_stop_leaves_no_process_or_directory() -> None:
    """A second, short-lived control plane: stop() must reap everything it started."""
    with ControlPlane() as cp:
        pids = cp.pids
        workdir = cp.workdir
        assert len(pids) == 3
        assert cp.request("GET", "/readyz")[0] == 200
    assert not workdir.exists()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
