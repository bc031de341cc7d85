"""A real `helm install`, `upgrade` and `uninstall` against the test apiserver, and
least privilege proved by asking the apiserver what each ServiceAccount may do.

There is no kubelet: the Deployments are created but their pods never run, so
nothing here waits for readiness (`helm install` without --wait).
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from tests.k8s.cluster import ControlPlane
from tests.k8s.helm.helm import Helm, HelmError

Rule = tuple[str, str, str, str]  # (apiGroup, resource, verb, resourceName or "")

NAMESPACED_KINDS = (
    "deployments,services,serviceaccounts,secrets,configmaps,networkpolicies,poddisruptionbudgets,roles,rolebindings,leases"
)


def _rules(cluster: ControlPlane, user: str, namespace: str) -> set[Rule]:
    """What the chart grants ``user`` in ``namespace``: every rule the apiserver's
    RBAC authorizer reports for it (a SelfSubjectRulesReview under impersonation,
    what `kubectl auth can-i --list` shows) minus what any ServiceAccount of that
    namespace has without a binding (self-reviews, discovery; it varies by
    Kubernetes version), as (group, resource, verb, name) tuples."""
    sa_namespace = user.split(":")[2]
    return _all_rules(cluster, user, namespace) - _all_rules(cluster, _sa(sa_namespace, "unbound"), namespace)


def _all_rules(cluster: ControlPlane, user: str, namespace: str) -> set[Rule]:
    review = cluster.kubectl_json(
        "create", f"--as={user}", "--validate=false", "-f", "-",  # validation would list CRDs as the user
        input=json.dumps({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectRulesReview",
            "spec": {"namespace": namespace},
        }),
    )  # fmt: skip
    assert not review["status"].get("incomplete"), review["status"]
    rules: set[Rule] = set()
    for rule in review["status"]["resourceRules"]:
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule["verbs"]:
                    for name in rule.get("resourceNames") or [""]:
                        rules.add((group, resource, verb, name))
    return rules


def _expand(group: str, resources: Iterable[str], verbs: Iterable[str], name: str = "") -> set[Rule]:
    return {(group, r, v, name) for r in resources for v in verbs}


# What the operator needs wherever it serves SmtpAccounts.
SERVING_RULES = (
    _expand("mailgate.dev", ["smtpaccounts"], ["get", "list", "watch", "patch"])
    | _expand("mailgate.dev", ["smtpaccounts/status"], ["get", "patch"])
    | _expand("", ["secrets"], ["get", "list", "watch"])
    | _expand("", ["events"], ["create", "patch"])
)
GATEWAY_RULES = _expand("authentication.k8s.io", ["tokenreviews"], ["create"])


def _home_rules(lease: str) -> set[Rule]:
    """What the operator needs in the release namespace: gateway discovery and its Lease."""
    return (
        _expand("", ["pods"], ["list", "watch"])
        | _expand("coordination.k8s.io", ["leases"], ["create"])
        | _expand("coordination.k8s.io", ["leases"], ["get", "update", "patch"], lease)
    )


def can_i(cluster: ControlPlane, user: str, verb: str, resource: str, namespace: str | None = None) -> bool:
    """``kubectl auth can-i`` as ``user`` (exit code 0 yes, 1 no)."""
    scope = ["-n", namespace] if namespace else ["--all-namespaces"]
    result = cluster.kubectl("auth", "can-i", verb, resource, *scope, f"--as={user}", check=False)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode == 0


def _sa(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def _admin_token(cluster: ControlPlane, namespace: str, secret: str) -> bytes:
    obj = cluster.get("secret", secret, namespace)
    assert obj is not None, f"secret {namespace}/{secret} missing"
    return base64.b64decode(obj["data"]["token"])


def _call_as(cluster: ControlPlane, token: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One API call with a ServiceAccount's own bearer token: (status, parsed body)."""
    context = ssl.create_default_context(cafile=str(cluster.ca_file)) if cluster.ca_file else ssl._create_unverified_context()
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{cluster.server}{path}", data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.loads(err.read())


def _labelled(cluster: ControlPlane, kinds: str, release: str, namespace: str | None) -> list[str]:
    scope = ["-n", namespace] if namespace else []
    result = cluster.kubectl("get", kinds, *scope, "-l", f"app.kubernetes.io/instance={release}", "-o", "name")
    return result.stdout.split()


# --------------------------------------------------------------------------- install, upgrade, uninstall


def test_install_upgrade_keeps_admin_token_and_uninstall_is_clean(
    cluster: ControlPlane, helm: Helm, make_namespace: Callable[[], str]
) -> None:
    ns, shop, crm = make_namespace(), make_namespace(), make_namespace()
    values: dict[str, Any] = {"watchNamespaces": [shop, crm]}

    installed = helm.install("mg", ns, values)

    # NOTES.txt tells how to send the first mail, with this release's real address.
    assert f"curl -sS http://mg-mailgate.{ns}.svc:8080/v1/accounts/{shop}/billing/messages" in installed.stdout
    (release,) = helm.releases(ns)
    assert release["status"] == "deployed"
    assert sorted(_labelled(cluster, "deployments", "mg", ns)) == [
        "deployment.apps/mg-mailgate-gateway",
        "deployment.apps/mg-mailgate-operator",
    ]
    for watched in (shop, crm):
        assert len(_labelled(cluster, "roles,rolebindings", "mg", watched)) == 2, watched
    token = _admin_token(cluster, ns, "mg-mailgate-admin-token")
    assert len(token) >= 32

    # An operator replica holds the chart's Lease; the upgrade must not take it away.
    held = json.dumps({"spec": {"holderIdentity": "op-0"}})
    cluster.kubectl("patch", "lease", "mg-mailgate-operator", "-n", ns, "--type=merge", "-p", held)

    helm.upgrade("mg", ns, {**values, "gateway": {"replicas": 3}})

    (release,) = helm.releases(ns)
    assert (release["status"], release["revision"]) == ("deployed", "2")
    gateway = cluster.get("deployment", "mg-mailgate-gateway", ns)
    assert gateway is not None and gateway["spec"]["replicas"] == 3
    assert _admin_token(cluster, ns, "mg-mailgate-admin-token") == token, "upgrade must keep the admin token"
    lease = cluster.get("lease", "mg-mailgate-operator", ns)
    assert lease is not None and lease["spec"]["holderIdentity"] == "op-0"

    helm.uninstall("mg", ns)

    assert helm.releases(ns) == []
    assert _labelled(cluster, NAMESPACED_KINDS, "mg", ns) == []
    for watched in (shop, crm):
        assert _labelled(cluster, "roles,rolebindings", "mg", watched) == []
    # CRDs outlive the release (Helm never deletes crds/): SmtpAccounts are user data.
    assert cluster.get("crd", "smtpaccounts.mailgate.dev") is not None


def test_existing_admin_token_secret_is_used_not_generated(
    cluster: ControlPlane, helm: Helm, make_namespace: Callable[[], str]
) -> None:
    ns = make_namespace()
    cluster.create_secret(ns, "my-admin-token", {"key": "s3cret-admin-token-from-vault"})

    helm.install("mg", ns, {"adminToken": {"existingSecret": "my-admin-token", "secretKey": "key"}})

    assert cluster.get("secret", "mg-mailgate-admin-token", ns) is None
    gateway = cluster.get("deployment", "mg-mailgate-gateway", ns)
    assert gateway is not None
    (volume,) = [v for v in gateway["spec"]["template"]["spec"]["volumes"] if v["name"] == "admin-token"]
    assert volume["secret"]["secretName"] == "my-admin-token"
    assert volume["secret"]["items"] == [{"key": "key", "path": "token"}]
    helm.uninstall("mg", ns)
    assert cluster.get("secret", "my-admin-token", ns) is not None, "a Secret the chart did not create stays"


def test_invalid_values_fail_the_install_and_create_nothing(
    cluster: ControlPlane, helm: Helm, make_namespace: Callable[[], str]
) -> None:
    ns = make_namespace()
    with pytest.raises(HelmError) as err:
        helm.install("mg", ns, {"gateway": {"replicas": "two"}})
    assert "/gateway/replicas" in err.value.stderr
    assert helm.releases(ns) == []
    assert _labelled(cluster, NAMESPACED_KINDS, "mg", ns) == []


# --------------------------------------------------------------------------- least privilege


def test_least_privilege_with_watched_namespaces(cluster: ControlPlane, helm: Helm, make_namespace: Callable[[], str]) -> None:
    ns, shop, crm, other = make_namespace(), make_namespace(), make_namespace(), make_namespace()
    helm.install("mg", ns, {"watchNamespaces": [shop, crm]})
    operator, gateway = _sa(ns, "mg-mailgate-operator"), _sa(ns, "mg-mailgate-gateway")

    # The complete rule set of each identity, namespace by namespace: nothing more.
    for watched in (shop, crm):
        assert _rules(cluster, operator, watched) == SERVING_RULES
    assert _rules(cluster, operator, ns) == _home_rules("mg-mailgate-operator")
    assert _rules(cluster, operator, other) == set()
    for where in (ns, shop, other):
        assert _rules(cluster, gateway, where) == GATEWAY_RULES

    # The promises of the issue, spelled out with `kubectl auth can-i`.
    assert can_i(cluster, operator, "get", "secrets", shop)
    assert can_i(cluster, operator, "watch", "secrets", crm)
    assert not can_i(cluster, operator, "get", "secrets", other)
    assert not can_i(cluster, operator, "get", "secrets", ns), "not even the admin token Secret"
    assert not can_i(cluster, operator, "list", "secrets")  # cluster-wide
    assert can_i(cluster, operator, "patch", "smtpaccounts.mailgate.dev/status", shop)
    assert not can_i(cluster, operator, "delete", "smtpaccounts.mailgate.dev", shop)
    assert not can_i(cluster, operator, "create", "smtpaccounts.mailgate.dev", shop)
    assert not can_i(cluster, operator, "list", "smtpaccounts.mailgate.dev", other)
    assert can_i(cluster, operator, "watch", "pods", ns)
    assert not can_i(cluster, operator, "watch", "pods", shop)
    assert not can_i(cluster, operator, "create", "pods", ns)
    assert not can_i(cluster, operator, "update", "secrets", shop)
    assert can_i(cluster, operator, "update", "leases.coordination.k8s.io/mg-mailgate-operator", ns)
    assert not can_i(cluster, operator, "update", "leases.coordination.k8s.io/kube-controller-manager", ns)
    assert can_i(cluster, gateway, "create", "tokenreviews.authentication.k8s.io")
    assert not can_i(cluster, gateway, "get", "secrets", ns)
    assert not can_i(cluster, gateway, "list", "smtpaccounts.mailgate.dev", shop)
    assert not can_i(cluster, gateway, "list", "pods", ns)

    helm.uninstall("mg", ns)
    assert _rules(cluster, operator, shop) == set()
    assert _rules(cluster, gateway, ns) == set()


def test_least_privilege_cluster_wide(cluster: ControlPlane, helm: Helm, make_namespace: Callable[[], str]) -> None:
    ns, anywhere = make_namespace(), make_namespace()
    helm.install("mg", ns)
    operator, gateway = _sa(ns, "mg-mailgate-operator"), _sa(ns, "mg-mailgate-gateway")

    assert _rules(cluster, operator, anywhere) == SERVING_RULES
    assert _rules(cluster, operator, ns) == SERVING_RULES | _home_rules("mg-mailgate-operator")
    assert _rules(cluster, gateway, anywhere) == GATEWAY_RULES
    assert can_i(cluster, operator, "list", "secrets")  # all namespaces: what cluster-wide means
    assert not can_i(cluster, operator, "list", "configmaps")
    assert not can_i(cluster, operator, "list", "pods", anywhere)
    assert not can_i(cluster, gateway, "get", "secrets", anywhere)

    # The binding works for the real identity, not only under impersonation:
    # with its own token the gateway may create a TokenReview, and nothing else.
    gateway_token = cluster.token(ns, "mg-mailgate-gateway", audience="https://kubernetes.default.svc")
    caller_token = cluster.token(ns, "default", audience="mailgate")
    review = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": caller_token, "audiences": ["mailgate"]},
    }
    status, body = _call_as(cluster, gateway_token, "POST", "/apis/authentication.k8s.io/v1/tokenreviews", review)
    assert status == 201 and body["status"]["user"]["username"] == _sa(ns, "default")
    status, _ = _call_as(cluster, gateway_token, "GET", f"/api/v1/namespaces/{ns}/secrets")
    assert status == 403

    helm.uninstall("mg", ns)
    assert cluster.get("clusterrole", f"{ns}-mg-mailgate-operator") is None
    assert cluster.get("clusterrolebinding", f"{ns}-mg-mailgate-gateway") is None
    assert _rules(cluster, operator, anywhere) == set()
