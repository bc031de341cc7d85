"""The chart wires the operator's OAuth2 token refresh (docs/oauth2.md): the operator
learns its pod IP from the downward API, so it can tell gateways where to ask
(``credentials.tokenRefreshUrl``), and the operator's NetworkPolicy lets the
release's gateway pods reach that address, the operator's metrics port.

The NetworkPolicy is checked by evaluating it for concrete pods (labels and
namespace) rather than by comparing YAML, so a rule that looks right but
selects nothing, or opens the port to everyone, fails here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from mailgate.cli import build_parser
from mailgate.operator.main import token_refresh_url
from tests.k8s.cluster import ControlPlane
from tests.k8s.helm.helm import Helm

RELEASE = "mg"
OPERATOR = f"{RELEASE}-mailgate-operator"
GATEWAY = f"{RELEASE}-mailgate-gateway"
EXAMPLE_POD_IP = "192.0.2.17"  # TEST-NET-1: only ever formatted into a URL, never contacted


def _named(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


# --------------------------------------------------------------------------- NetworkPolicy semantics


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels, and matchExpressions with In/NotIn/Exists/DoesNotExist)."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        ok = {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[operator]
        if not ok:
            return False
    return True


def _peer_admits(peer: dict[str, Any], policy_namespace: str, namespace: str, labels: dict[str, str]) -> bool:
    """One NetworkPolicyPeer: a podSelector alone means the policy's own namespace."""
    assert "ipBlock" not in peer, "the chart's operator policy uses no ipBlock"
    namespace_labels = {"kubernetes.io/metadata.name": namespace}
    if "namespaceSelector" in peer:
        if not _selects(peer["namespaceSelector"], namespace_labels):
            return False
    elif namespace != policy_namespace:
        return False
    return _selects(peer.get("podSelector", {}), labels)


def _admits(policy: dict[str, Any], container: dict[str, Any], *, namespace: str, labels: dict[str, str], port: str) -> bool:
    """Whether ``policy`` lets a pod (``labels`` in ``namespace``) reach ``container``'s named ``port``."""
    number = {p["name"]: p["containerPort"] for p in container["ports"]}[port]
    policy_namespace = policy["metadata"]["namespace"]
    for rule in policy["spec"].get("ingress", []):
        ports = rule.get("ports")
        if ports is not None and not any(p.get("port") in (port, number) and p.get("protocol", "TCP") == "TCP" for p in ports):
            continue
        peers = rule.get("from")
        if peers is None or any(_peer_admits(peer, policy_namespace, namespace, labels) for peer in peers):
            return True
    return False


# --------------------------------------------------------------------------- assertions shared by render and install


def _assert_operator_advertises_pod_ip(operator: dict[str, Any]) -> None:
    """POD_IP comes from status.podIP, and the operator's own code turns it into a
    refresh URL on the container port the chart names ``metrics``."""
    container = _container(operator)
    env = {e["name"]: e for e in container["env"]}
    field_ref = env["POD_IP"]["valueFrom"]["fieldRef"]  # the apiserver adds apiVersion v1 by default
    assert (field_ref["fieldPath"], field_ref.get("apiVersion", "v1")) == ("status.podIP", "v1")
    parsed = build_parser().parse_args(container["args"])
    assert parsed.advertise_address is None, "an explicit --advertise-address would shadow $POD_IP"
    metrics_port = {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"]
    url = token_refresh_url(EXAMPLE_POD_IP, parsed.metrics_port)  # what main() does with $POD_IP
    assert url == f"http://{EXAMPLE_POD_IP}:{metrics_port}/v1/token-refresh"


def _assert_gateways_reach_operator_metrics(
    policy: dict[str, Any], operator: dict[str, Any], gateway: dict[str, Any], namespace: str, scrapers: list[str]
) -> None:
    operator_container = _container(operator)
    assert policy["spec"]["podSelector"]["matchLabels"] == operator["spec"]["selector"]["matchLabels"]
    assert _selects(policy["spec"]["podSelector"], _pod_labels(operator))

    def admits(ns: str, labels: dict[str, str], port: str = "metrics") -> bool:
        return _admits(policy, operator_container, namespace=ns, labels=labels, port=port)

    gateway_pod = _pod_labels(gateway)
    assert admits(namespace, gateway_pod), "the release's gateway pods must reach POST /v1/token-refresh"
    assert not admits(namespace, gateway_pod, port="health"), "only the metrics port is opened"
    for scraper in scrapers:
        assert admits(scraper, {"app": "prometheus"})
    if scrapers:
        # Restricted: neither other pods of the release namespace nor a look-alike
        # gateway pod elsewhere get in; the gateway rule is by pod and namespace.
        assert not admits(namespace, {"app": "something-else"})
        assert not admits("elsewhere", gateway_pod)


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("operator_values", [{}, {"metricsPort": 9191}], ids=["default-port", "custom-port"])
def test_operator_gets_its_pod_ip_for_the_token_refresh_url(helm_offline: Helm, operator_values: dict[str, Any]) -> None:
    objs = helm_offline.render(release=RELEASE, namespace="mail", values={"operator": operator_values})
    operator = _named(objs, "Deployment", OPERATOR)
    _assert_operator_advertises_pod_ip(operator)
    if operator_values:
        assert f"--metrics-port={operator_values['metricsPort']}" in _container(operator)["args"]


@pytest.mark.parametrize("scrapers", [[], ["monitoring"]], ids=["metrics-open", "metrics-restricted"])
def test_operator_network_policy_admits_gateway_pods_to_the_metrics_port(helm_offline: Helm, scrapers: list[str]) -> None:
    objs = helm_offline.render(
        release=RELEASE, namespace="mail", values={"networkPolicy": {"metrics": {"fromNamespaces": scrapers}}}
    )
    _assert_gateways_reach_operator_metrics(
        _named(objs, "NetworkPolicy", OPERATOR),
        _named(objs, "Deployment", OPERATOR),
        _named(objs, "Deployment", GATEWAY),
        "mail",
        scrapers,
    )


def test_installed_chart_keeps_the_pod_ip_and_the_gateway_rule(
    cluster: ControlPlane, helm: Helm, make_namespace: Callable[[], str]
) -> None:
    """What the apiserver stored after a real `helm install` (its defaulting and
    validation applied) still has both, with scraping restricted."""
    namespace = make_namespace()
    helm.install(RELEASE, namespace, {"networkPolicy": {"metrics": {"fromNamespaces": ["monitoring"]}}})
    try:
        operator = cluster.get("deployment", OPERATOR, namespace)
        gateway = cluster.get("deployment", GATEWAY, namespace)
        policy = cluster.get("networkpolicy", OPERATOR, namespace)
        assert operator is not None and gateway is not None and policy is not None
        _assert_operator_advertises_pod_ip(operator)
        _assert_gateways_reach_operator_metrics(policy, operator, gateway, namespace, ["monitoring"])
    finally:
        helm.uninstall(RELEASE, namespace)
