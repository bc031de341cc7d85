"""Fixtures for the Helm chart tests: the real helm binary, render-only or against the test apiserver."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.k8s.cluster import ControlPlane, locate_binaries
from tests.k8s.helm.helm import Helm

# The smallest ServiceMonitor CRD that lets the apiserver accept the chart's
# ServiceMonitors (the Prometheus Operator is not part of the test cluster; its
# real CRD would add schema checks, not behaviour these tests look at).
SERVICE_MONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {"kind": "ServiceMonitor", "plural": "servicemonitors", "singular": "servicemonitor"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                    }
                },
            }
        ],
    },
}


@pytest.fixture(scope="session")
def helm_offline(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """helm for lint and template: no cluster needed."""
    return Helm(locate_binaries().path("helm"), tmp_path_factory.mktemp("helm-offline"))


@pytest.fixture(scope="session")
def cluster(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> ControlPlane:
    """The control plane (its fixture installs the SmtpAccount CRD the chart ships)
    plus a minimal ServiceMonitor CRD for the chart's optional ServiceMonitors."""
    crd_dir = tmp_path_factory.mktemp("monitoring-crd")
    (crd_dir / "servicemonitors.yaml").write_text(json.dumps(SERVICE_MONITOR_CRD))  # JSON is YAML
    control_plane.install_crds(crd_dir)
    return control_plane


@pytest.fixture(scope="session")
def helm(cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """helm against the test apiserver as admin."""
    return Helm(locate_binaries().path("helm"), tmp_path_factory.mktemp("helm"), kubeconfig=cluster.kubeconfig)


@pytest.fixture
def make_namespace(cluster: ControlPlane) -> Iterator[Callable[[], str]]:
    """Creates fresh namespaces on demand; all deleted after the test."""
    made: list[str] = []

    def make() -> str:
        name = f"h-{uuid.uuid4().hex[:10]}"
        cluster.create_namespace(name)
        made.append(name)
        return name

    yield make
    for name in made:
        cluster.delete_namespace(name, wait=False)

