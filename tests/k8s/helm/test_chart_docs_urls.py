"""Every in-cluster address the README and the docs give names a Service (and port) the chart really creates.

A newcomer copies these into Grafana, Keycloak or a curl command; a name
the chart does not create (the README once said ``mailgate-gateway.<ns>``
where ``helm install mailgate charts/mailgate`` creates ``mailgate``) is a
failed first send.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.k8s.helm.helm import Helm

ROOT = Path(__file__).resolve().parents[3]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "charts" / "mailgate" / "README.md"]
# <service>.<namespace>[.svc[.cluster.local]][:port], where the namespace is a placeholder or .svc follows.
IN_CLUSTER = re.compile(
    r"(?<![\w.-])(?P<service>[a-z0-9][a-z0-9-]*)\.(?P<namespace><ns>|[a-z0-9][a-z0-9-]*(?=\.svc\b))"
    r"(?:\.svc(?:\.cluster\.local)?)?(?::(?P<port>\d+))?"
)
RELEASE = "mailgate"  # as the docs install it: helm install mailgate charts/mailgate
# Every port the docs may mention: the SMTP ingress on, with its implicit-TLS listener.
VALUES = {"gateway": {"smtp": {"enabled": True, "implicitTlsPort": 4650, "tls": {"secretName": "smtp-tls"}}}}


def addresses() -> list[tuple[str, str, str, int | None]]:
    found = []
    for document in DOCUMENTS:
        for match in IN_CLUSTER.finditer(document.read_text()):
            port = int(match["port"]) if match["port"] else None
            found.append((document.name, match["service"], match["namespace"], port))
    return sorted(set(found), key=str)


def test_the_docs_give_in_cluster_addresses() -> None:
    """The pattern finds what it must (otherwise the test below checks nothing)."""
    found = {(doc, service, port) for doc, service, _, port in addresses()}
    assert ("README.md", "mailgate", 8080) in found
    assert any(doc == "smtp-ingress.md" for doc, _, _ in found)


@pytest.mark.parametrize("address", addresses(), ids=lambda a: f"{a[0]}:{a[1]}.{a[2]}:{a[3]}")
def test_every_in_cluster_address_names_a_service_of_the_chart(
    helm_offline: Helm, address: tuple[str, str, str, int | None]
) -> None:
    document, service, namespace, port = address
    namespace = "mailgate" if namespace == "<ns>" else namespace
    objects: list[dict[str, Any]] = helm_offline.render(release=RELEASE, namespace=namespace, values=VALUES)
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    assert service in services, f"{document} names Service {service!r}; the chart creates {sorted(services)}"
    assert all(o["metadata"].get("namespace", namespace) == namespace for o in services.values())
    if port is not None:
        ports = [p["port"] for p in services[service]["spec"]["ports"]]
        assert port in ports, f"{document} gives {service}:{port}; that Service has ports {ports}"
