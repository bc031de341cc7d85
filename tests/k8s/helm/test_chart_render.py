"""The chart renders, lints, rejects bad values, and what it renders the apiserver accepts."""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailgate.cli import build_parser
from mailgate.gateway.metrics import GatewayMetrics
from mailgate.gateway.queue_args import QUEUE_URL_ENV, queue_options
from mailgate.ingress.options import from_args, parse_networks
from mailgate.pool import SMTPPool
from mailgate.relay.accounts import AccountRegistry
from tests.k8s.cluster import ControlPlane
from tests.k8s.helm.helm import CHART, REPO_ROOT, Helm, HelmError

GENERATED_CRD = REPO_ROOT / "crds" / "smtpaccounts.mailgate.dev.yaml"
CHART_CRD = CHART / "crds" / "smtpaccounts.mailgate.dev.yaml"

# The SMTP ingress with every option set (the TLS Secret need not exist to render or dry-run).
SMTP_FULL: dict[str, Any] = {
    "enabled": True,
    "implicitTlsPort": 4650,
    "tls": {"secretName": "smtp-cert"},
    "trustedNetworks": ["10.0.0.0/8", "fd00::/8"],
    "defaultAccount": "shop/billing",
    "service": {"port": 25, "implicitTlsPort": 465},
}

# A durable queue of each kind, tunables away from their defaults so the flags can be told apart from them.
QUEUE_TUNABLES: dict[str, Any] = {
    "concurrency": 8,
    "retryDelaySeconds": 60,
    "maxRetryDelaySeconds": 3600,
    "keepFinishedSeconds": 1209600,
}
SQLITE_QUEUE: dict[str, Any] = {"replicas": 1, "queue": {"type": "sqlite", **QUEUE_TUNABLES}}
POSTGRES_QUEUE: dict[str, Any] = {
    "replicas": 3,
    "queue": {"type": "postgresql", "postgresql": {"existingSecret": "mailgate-db-app", "secretKey": "uri"}},
}
# What the kubelet puts in $MAILGATE_QUEUE_URL from the Secret; never rendered by the chart.
FAKE_DSN = "postgresql://mailgate:s3cret@db.example:5432/mailgate"

# Values that switch on everything optional, with a namespace list (the
# namespaces are filled in by the tests that need them to exist).
NON_DEFAULT: dict[str, Any] = {
    "gateway": {
        "replicas": 4,
        "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 9},
        "logFormat": "text",
        "extraArgs": ["--verbose"],
        "smtp": SMTP_FULL,
    },
    "operator": {"replicas": 3},
    "networkPolicy": {"send": {"fromNamespaces": ["shop"]}, "metrics": {"fromNamespaces": ["monitoring"]}},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}, "grafanaDashboard": {"enabled": True}},
    "image": {"tag": "9.9.9"},
}


def _by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def _one(objs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = [o for o in _by_kind(objs, kind) if o["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind} *{name_suffix}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


# --------------------------------------------------------------------------- lint, CRD, metadata


@pytest.mark.parametrize(
    "values",
    [None, NON_DEFAULT, {"gateway": SQLITE_QUEUE}, {"gateway": POSTGRES_QUEUE}],
    ids=["default", "non-default", "queue-sqlite", "queue-postgresql"],
)
def test_lint_strict_passes(helm_offline: Helm, tmp_path: Path, values: dict[str, Any] | None) -> None:
    args = ["lint", "--strict", str(CHART)]
    if values:
        (tmp_path / "values.json").write_text(json.dumps({**values, "watchNamespaces": ["shop", "billing"]}))
        args += ["--values", str(tmp_path / "values.json")]
    result = helm_offline.run(*args)
    assert "0 chart(s) failed" in result.stdout, result.stdout


def test_chart_crd_is_the_generated_file_not_a_copy(helm_offline: Helm, tmp_path: Path) -> None:
    """The chart's CRD is a symlink to `mailgate crd`'s output; Helm follows it and
    packages its bytes, so an installed chart can never drift from spec.py."""
    assert CHART_CRD.is_symlink()
    assert CHART_CRD.resolve() == GENERATED_CRD.resolve()

    rendered = helm_offline.render(include_crds=True)
    crd = _one(rendered, "CustomResourceDefinition", "smtpaccounts.mailgate.dev")
    assert crd == yaml.safe_load(GENERATED_CRD.read_text())

    helm_offline.run("package", str(CHART), "-d", str(tmp_path))
    (package,) = tmp_path.glob("mailgate-*.tgz")
    with tarfile.open(package) as tar:
        member = tar.extractfile("mailgate/crds/smtpaccounts.mailgate.dev.yaml")
        assert member is not None
        assert member.read() == GENERATED_CRD.read_bytes()


def test_image_tag_defaults_to_app_version_which_follows_the_project_version(helm_offline: Helm) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project_version = _pyproject_version()
    assert chart["appVersion"] == project_version

    objs = helm_offline.render()
    for deployment in _by_kind(objs, "Deployment"):
        assert _container(deployment)["image"].endswith(f"/mailgate:{project_version}")

    pinned = helm_offline.render(values={"image": {"digest": "sha256:" + "ab" * 32}})
    for deployment in _by_kind(pinned, "Deployment"):
        assert _container(deployment)["image"].endswith("/mailgate@sha256:" + "ab" * 32)


def _pyproject_version() -> str:
    import tomllib

    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]


async def test_grafana_dashboard_queries_metrics_the_gateway_exports(helm_offline: Helm) -> None:
    """Every gateway metric a panel queries exists in the gateway's real /metrics
    output, so a renamed metric breaks this test instead of the dashboard."""
    objs = helm_offline.render(values={"metrics": {"grafanaDashboard": {"enabled": True}}})
    configmap = _one(objs, "ConfigMap", "-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["mailgate.json"])
    queried = {
        re.sub(r"_(bucket|count|sum)$", "", name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bmailgate_\w+", target["expr"])
    }
    gateway_queried = {name for name in queried if not name.startswith("mailgate_operator_")}
    assert gateway_queried

    pool = SMTPPool()
    try:
        exposition = GatewayMetrics(pool, AccountRegistry(pool)).render().decode()
    finally:
        await pool.close_all()
    exported = set(re.findall(r"^# HELP (\S+)", exposition, re.MULTILINE))
    assert gateway_queried <= exported, f"not exported by the gateway: {sorted(gateway_queried - exported)}"


def _leaf_paths(values: dict[str, Any], prefix: str = "") -> list[str]:
    paths: list[str] = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        paths += _leaf_paths(value, f"{path}.") if isinstance(value, dict) and value else [path]
    return paths


def test_readme_values_table_matches_values_yaml() -> None:
    """Every value is in the README's table (itself or a documented parent such as
    `gateway.resources`), and every row names a value that exists."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    rows = re.findall(r"^\| `([\w.]+)` \|", readme, re.MULTILINE)
    for path in _leaf_paths(values):
        parts = path.split(".")
        prefixes = {".".join(parts[:n]) for n in range(1, len(parts) + 1)}
        assert prefixes & set(rows), f"{path} is not documented in charts/mailgate/README.md"
    for row in rows:
        node: Any = values
        for part in row.split("."):
            assert isinstance(node, dict) and part in node, f"README documents {row}, which values.yaml lacks"
            node = node[part]


# --------------------------------------------------------------------------- what the defaults promise


def test_default_render_is_locked_down(helm_offline: Helm) -> None:
    """Security context, probes, args and the admin-token mount of both Deployments."""
    objs = helm_offline.render(release="mg", namespace="mail")
    gateway = _one(objs, "Deployment", "-gateway")
    operator = _one(objs, "Deployment", "-operator")
    assert gateway["spec"]["replicas"] == 2
    assert operator["spec"]["replicas"] == 2

    for deployment in (gateway, operator):
        pod = deployment["spec"]["template"]["spec"]
        container = _container(deployment)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
        assert "--admin-token-file=/var/run/mailgate/admin/token" in container["args"]
        mount = next(m for m in container["volumeMounts"] if m["name"] == "admin-token")
        assert mount == {"name": "admin-token", "mountPath": "/var/run/mailgate/admin", "readOnly": True}

    g = _container(gateway)
    assert g["args"][0] == "gateway"
    assert {"--in-cluster", "--host=0.0.0.0", "--port=8080", "--admin-port=8081", "--log-format=json"} <= set(g["args"])
    assert g["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert g["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert {p["name"]: p["containerPort"] for p in g["ports"]} == {"http": 8080, "admin": 8081}

    o = _container(operator)
    assert o["args"][0] == "operator"
    assert "--gateway-namespace=mail" in o["args"]
    selector = next(a for a in o["args"] if a.startswith("--gateway-selector="))
    assert set(selector.split("=", 1)[1].split(",")) == {
        "app.kubernetes.io/name=mailgate",
        "app.kubernetes.io/instance=mg",
        "app.kubernetes.io/component=gateway",
    }
    assert not [a for a in o["args"] if a.startswith("--namespace")], "cluster-wide by default"
    assert o["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert "--peering=mg-mailgate-operator" in o["args"]  # the Lease the replicas elect a leader with

    # The gateway selector the operator uses really selects the gateway pods.
    pod_labels = gateway["spec"]["template"]["metadata"]["labels"]
    for pair in selector.split("=", 1)[1].split(","):
        key, value = pair.split("=")
        assert pod_labels[key] == value

    # The admin port is in no Service; only the send port is.
    ports = [p["targetPort"] for s in _by_kind(objs, "Service") for p in s["spec"]["ports"]]
    assert sorted(ports) == ["http", "metrics"]


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"watchNamespaces": ["shop", "crm"], "operator": {"replicas": 1, "leaderElection": {"enabled": False}}},
        {"gateway": {"smtp": {"enabled": True}}},
        {"gateway": {"smtp": SMTP_FULL}},
        {"gateway": SQLITE_QUEUE},
        {"gateway": POSTGRES_QUEUE},
    ],
    ids=["default", "namespaces-standalone", "smtp-minimal", "smtp-full", "queue-sqlite", "queue-postgresql"],
)
def test_container_args_are_accepted_by_the_real_cli(
    helm_offline: Helm, monkeypatch: pytest.MonkeyPatch, values: dict[str, Any]
) -> None:
    """The chart's command lines parse with mailgate's own argument parser, so a
    renamed flag fails here rather than in a crash-looping pod."""
    monkeypatch.delenv(QUEUE_URL_ENV, raising=False)
    objs = helm_offline.render(values=values)
    for deployment in _by_kind(objs, "Deployment"):
        args = _container(deployment)["args"]
        try:
            parsed = build_parser().parse_args(args)
        except SystemExit:
            pytest.fail(f"mailgate rejects the args of {deployment['metadata']['name']}: {args}")
        assert parsed.command == args[0]
        if parsed.command == "operator":
            assert (parsed.namespace or []) == values.get("watchNamespaces", [])
        if parsed.command == "gateway":
            _assert_smtp_options(parsed, values.get("gateway", {}).get("smtp", {}))
            _assert_queue_options(parsed, _container(deployment), values.get("gateway", {}).get("queue", {}), monkeypatch)


def _assert_smtp_options(parsed: Any, smtp: dict[str, Any]) -> None:
    """The ingress options mailgate builds from the rendered flags are the ones the values ask for."""
    options = from_args(parsed)  # raises on inconsistent flags, e.g. implicit TLS without a certificate
    if not smtp.get("enabled"):
        assert not options.enabled
        return
    assert options.port == 2525
    assert options.implicit_tls_port == (smtp.get("implicitTlsPort") or None)
    assert options.tls == bool(smtp.get("tls", {}).get("secretName"))
    if options.tls:
        assert (options.tls_cert, options.tls_key) == ("/etc/mailgate/smtp-tls/tls.crt", "/etc/mailgate/smtp-tls/tls.key")
    assert options.trusted_networks == parse_networks(smtp.get("trustedNetworks", []))
    assert options.default_account == (smtp.get("defaultAccount") or None)
    assert options.hostname == "$(POD_NAME)"  # the kubelet expands it from the env var


def _assert_queue_options(parsed: Any, container: dict[str, Any], queue: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The outbox mailgate builds from the rendered flags and environment is the one the values ask for."""
    kind = queue.get("type", "none")
    from_secret = [e for e in container["env"] if e["name"] == QUEUE_URL_ENV]
    if kind == "postgresql":
        (env,) = from_secret
        assert env["valueFrom"]["secretKeyRef"] == {"name": "mailgate-db-app", "key": "uri"}
        monkeypatch.setenv(QUEUE_URL_ENV, FAKE_DSN)  # the kubelet resolves the secretKeyRef into the variable
    else:
        assert not from_secret
    options = queue_options(parsed)  # raises on flags the gateway would refuse at start-up
    if kind == "none":
        assert options is None
        return
    assert options is not None
    assert options.url == {"sqlite": "sqlite:////var/lib/mailgate/queue.db", "postgresql": FAKE_DSN}[kind]
    tunables = {**QUEUE_DEFAULTS, **{k: v for k, v in queue.items() if k in QUEUE_DEFAULTS}}
    assert options.concurrency == tunables["concurrency"]
    assert options.policy is not None
    assert options.policy.first_delay == tunables["retryDelaySeconds"]
    assert options.policy.max_delay == tunables["maxRetryDelaySeconds"]
    assert options.keep_finished == tunables["keepFinishedSeconds"]


QUEUE_DEFAULTS = {k: yaml.safe_load((CHART / "values.yaml").read_text())["gateway"]["queue"][k] for k in QUEUE_TUNABLES}


def test_queue_value_defaults_are_the_gateway_flag_defaults() -> None:
    """values.yaml documents the flags' own defaults, so leaving a value alone changes nothing."""
    parsed = build_parser().parse_args(["gateway"])
    flags = {
        "concurrency": parsed.queue_concurrency,
        "retryDelaySeconds": parsed.queue_retry_delay,
        "maxRetryDelaySeconds": parsed.queue_max_retry_delay,
        "keepFinishedSeconds": parsed.queue_keep_finished,
    }
    assert QUEUE_DEFAULTS == flags


# --------------------------------------------------------------------------- the durable queue


def _queue_args(container: dict[str, Any]) -> list[str]:
    return [a for a in container["args"] if a.startswith("--queue")]


def test_no_queue_renders_nothing_queue_related(helm_offline: Helm) -> None:
    """type none (the default) leaves the gateway as it was before the queue existed,
    whatever else is set under gateway.queue."""
    default = helm_offline.render(release="mg")
    gateway = _one(default, "Deployment", "-gateway")
    container = _container(gateway)
    assert not _queue_args(container)
    assert QUEUE_URL_ENV not in {e["name"] for e in container["env"]}
    assert "queue" not in {v["name"] for v in gateway["spec"]["template"]["spec"]["volumes"]}
    assert "queue" not in {m["name"] for m in container["volumeMounts"]}
    assert not _by_kind(default, "PersistentVolumeClaim")
    assert gateway["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}

    unused = {
        "type": "none",
        "postgresql": {"existingSecret": "mailgate-db-app", "secretKey": "uri"},
        "sqlite": {"size": "5Gi", "storageClassName": "fast", "existingClaim": "mine"},
        **QUEUE_TUNABLES,
    }
    explicit = helm_offline.render(release="mg", values={"gateway": {"queue": unused}})
    assert _one(explicit, "Deployment", "-gateway") == gateway
    assert sorted(o["kind"] for o in explicit) == sorted(o["kind"] for o in default)


def test_sqlite_queue_has_one_gateway_a_claim_and_recreate(helm_offline: Helm) -> None:
    objs = helm_offline.render(
        release="mg", values={"gateway": {**SQLITE_QUEUE, "queue": {**SQLITE_QUEUE["queue"], "sqlite": {"size": "5Gi"}}}}
    )
    gateway = _one(objs, "Deployment", "-gateway")
    pod = gateway["spec"]["template"]["spec"]
    container = _container(gateway)

    claim = _one(objs, "PersistentVolumeClaim")
    assert claim["metadata"]["name"] == "mg-mailgate-gateway-queue"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"  # it may hold undelivered mail
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert "storageClassName" not in claim["spec"]  # the cluster's default class

    volume = next(v for v in pod["volumes"] if v["name"] == "queue")
    assert volume == {"name": "queue", "persistentVolumeClaim": {"claimName": "mg-mailgate-gateway-queue"}}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "queue")
    assert mount == {"name": "queue", "mountPath": "/var/lib/mailgate"}  # writable, unlike the root filesystem
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["fsGroup"] == 10001  # the kubelet gives the volume to the image's group

    assert _queue_args(container) == [
        "--queue=sqlite:////var/lib/mailgate/queue.db",
        "--queue-concurrency=8",
        "--queue-retry-delay=60",
        "--queue-max-retry-delay=3600",
        "--queue-keep-finished=1209600",
    ]
    assert QUEUE_URL_ENV not in {e["name"] for e in container["env"]}
    assert gateway["spec"]["replicas"] == 1
    assert gateway["spec"]["strategy"] == {"type": "Recreate"}  # a surge pod could not mount the RWO volume


@pytest.mark.parametrize(
    ("sqlite", "expected"),
    [({"storageClassName": "fast"}, "fast"), ({"storageClassName": "-"}, "")],
    ids=["named", "dash-means-none"],
)
def test_sqlite_queue_storage_class(helm_offline: Helm, sqlite: dict[str, Any], expected: str) -> None:
    objs = helm_offline.render(values={"gateway": {"replicas": 1, "queue": {"type": "sqlite", "sqlite": sqlite}}})
    assert _one(objs, "PersistentVolumeClaim")["spec"]["storageClassName"] == expected


def test_sqlite_queue_on_an_existing_claim_creates_none(helm_offline: Helm) -> None:
    objs = helm_offline.render(
        values={"gateway": {"replicas": 1, "queue": {"type": "sqlite", "sqlite": {"existingClaim": "mail-queue"}}}}
    )
    assert not _by_kind(objs, "PersistentVolumeClaim")
    gateway = _one(objs, "Deployment", "-gateway")
    volume = next(v for v in gateway["spec"]["template"]["spec"]["volumes"] if v["name"] == "queue")
    assert volume["persistentVolumeClaim"] == {"claimName": "mail-queue"}


@pytest.mark.parametrize(
    "extra",
    [{}, {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 5}}],
    ids=["replicas", "autoscaling"],
)
def test_postgresql_queue_reads_its_dsn_from_the_secret_only(helm_offline: Helm, extra: dict[str, Any]) -> None:
    """Several gateways share the queue; the DSN (with its password) is never in the args or the manifests."""
    objs = helm_offline.render(release="mg", values={"gateway": {**POSTGRES_QUEUE, **extra}})
    gateway = _one(objs, "Deployment", "-gateway")
    container = _container(gateway)
    (env,) = [e for e in container["env"] if e["name"] == QUEUE_URL_ENV]
    assert env == {"name": QUEUE_URL_ENV, "valueFrom": {"secretKeyRef": {"name": "mailgate-db-app", "key": "uri"}}}
    assert _queue_args(container) == [
        "--queue-concurrency=64",
        "--queue-retry-delay=300",
        "--queue-max-retry-delay=4000",
        "--queue-keep-finished=604800",
    ]
    assert not [a for a in container["args"] if "postgres" in a]
    assert not _by_kind(objs, "PersistentVolumeClaim")
    assert "queue" not in {v["name"] for v in gateway["spec"]["template"]["spec"]["volumes"]}
    assert gateway["spec"]["strategy"]["type"] == "RollingUpdate"
    # The NetworkPolicies restrict ingress only, so the gateways can reach PostgreSQL.
    for policy in _by_kind(objs, "NetworkPolicy"):
        assert policy["spec"]["policyTypes"] == ["Ingress"]


def test_postgresql_secret_key_defaults_to_dsn(helm_offline: Helm) -> None:
    objs = helm_offline.render(values={"gateway": {"queue": {"type": "postgresql", "postgresql": {"existingSecret": "q"}}}})
    (env,) = [e for e in _container(_one(objs, "Deployment", "-gateway"))["env"] if e["name"] == QUEUE_URL_ENV]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "q", "key": "dsn"}


def test_admin_port_admits_only_operator_and_gateway_pods(helm_offline: Helm) -> None:
    """The operator pushes configuration to the admin port; a gateway without a
    share of an account relays SMTP messages to a peer's admin port
    (POST /v1/relay/...). Nobody else reaches it."""
    objs = helm_offline.render(release="mg", values={"networkPolicy": {"send": {"fromNamespaces": ["shop", "crm"]}}})
    policy = _one(objs, "NetworkPolicy", "-gateway")
    operator_labels = _one(objs, "Deployment", "-operator")["spec"]["selector"]["matchLabels"]
    gateway_labels = _one(objs, "Deployment", "-gateway")["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["podSelector"]["matchLabels"] == gateway_labels
    by_port = {rule["ports"][0]["port"]: rule["from"] for rule in policy["spec"]["ingress"]}
    assert set(by_port) == {"admin", "http"}
    assert by_port["admin"] == [
        {"podSelector": {"matchLabels": operator_labels}},
        {"podSelector": {"matchLabels": gateway_labels}},  # SMTP relayed to a peer with a share
    ]
    send_from = by_port["http"]
    assert {"podSelector": {"matchLabels": operator_labels}} in send_from
    assert {"podSelector": {"matchLabels": gateway_labels}} in send_from  # forwarding between gateways
    (ns_peer,) = [p for p in send_from if "namespaceSelector" in p]
    assert ns_peer["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["shop", "crm"]}
    ]


def test_smtp_ingress_is_off_by_default_and_fully_wired_when_enabled(helm_offline: Helm) -> None:
    """Enabled: container ports, Service ports, the TLS Secret mounted read-only,
    and the NetworkPolicy admitting the SMTP ports from exactly the send API's peers."""
    default = helm_offline.render(release="mg")
    assert not [a for a in _container(_one(default, "Deployment", "-gateway"))["args"] if a.startswith("--smtp")]
    assert [p["name"] for p in _one(default, "Service", "mg-mailgate")["spec"]["ports"]] == ["http"]

    objs = helm_offline.render(
        release="mg", values={"gateway": {"smtp": SMTP_FULL}, "networkPolicy": {"send": {"fromNamespaces": ["shop"]}}}
    )
    gateway = _one(objs, "Deployment", "-gateway")
    container = _container(gateway)
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "http": 8080,
        "admin": 8081,
        "smtp": 2525,
        "smtps": 4650,
    }
    service = _one(objs, "Service", "mg-mailgate")
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        "http": (8080, "http"),
        "smtp": (25, "smtp"),
        "smtps": (465, "smtps"),
    }
    mount = next(m for m in container["volumeMounts"] if m["name"] == "smtp-tls")
    assert mount == {"name": "smtp-tls", "mountPath": "/etc/mailgate/smtp-tls", "readOnly": True}
    volume = next(v for v in gateway["spec"]["template"]["spec"]["volumes"] if v["name"] == "smtp-tls")
    assert volume["secret"]["secretName"] == "smtp-cert"
    assert {i["key"] for i in volume["secret"]["items"]} == {"tls.crt", "tls.key"}

    policy = _one(objs, "NetworkPolicy", "-gateway")
    (send_rule,) = [r for r in policy["spec"]["ingress"] if {"port": "http", "protocol": "TCP"} in r["ports"]]
    assert {p["port"] for p in send_rule["ports"]} == {"http", "smtp", "smtps"}
    other_ports = [p["port"] for r in policy["spec"]["ingress"] if r is not send_rule for p in r["ports"]]
    assert "smtp" not in other_ports and "smtps" not in other_ports
    (ns_peer,) = [p for p in send_rule["from"] if "namespaceSelector" in p]
    assert ns_peer["namespaceSelector"]["matchExpressions"][0]["values"] == ["shop"]


def test_smtp_ingress_without_tls_mounts_nothing(helm_offline: Helm) -> None:
    objs = helm_offline.render(values={"gateway": {"smtp": {"enabled": True, "trustedNetworks": ["10.0.0.0/8"]}}})
    gateway = _one(objs, "Deployment", "-gateway")
    args = _container(gateway)["args"]
    assert "--smtp-port=2525" in args and "--smtp-trusted-networks=10.0.0.0/8" in args
    assert not [a for a in args if a.startswith(("--smtp-tls", "--smtp-implicit"))]
    assert "smtp-tls" not in {v["name"] for v in gateway["spec"]["template"]["spec"]["volumes"]}


def test_autoscaling_replaces_fixed_replicas(helm_offline: Helm) -> None:
    objs = helm_offline.render(values={"gateway": {"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 7}}})
    gateway = _one(objs, "Deployment", "-gateway")
    assert "replicas" not in gateway["spec"]
    hpa = _one(objs, "HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 7)
    assert hpa["spec"]["scaleTargetRef"]["name"] == gateway["metadata"]["name"]


# --------------------------------------------------------------------------- bad values fail with a clear message

# (case id, values, text helm's error must contain)
INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("replicas-zero", {"gateway": {"replicas": 0}}, "/gateway/replicas"),
    ("replicas-string", {"gateway": {"replicas": "three"}}, "/gateway/replicas"),
    ("typo-top-level", {"gatway": {"replicas": 2}}, "'gatway' not allowed"),
    ("typo-nested", {"gateway": {"replica": 2}}, "'replica' not allowed"),
    ("namespace-uppercase", {"watchNamespaces": ["Shop"]}, "/watchNamespaces/0"),
    ("namespaces-not-a-list", {"watchNamespaces": "shop"}, "/watchNamespaces"),
    ("namespace-twice", {"watchNamespaces": ["shop", "shop"]}, "/watchNamespaces"),
    ("port-out-of-range", {"gateway": {"port": 70000}}, "/gateway/port"),
    ("pull-policy-unknown", {"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ("log-format-unknown", {"gateway": {"logFormat": "xml"}}, "/gateway/logFormat"),
    ("digest-malformed", {"image": {"digest": "latest"}}, "/image/digest"),
    ("send-namespace-bad", {"networkPolicy": {"send": {"fromNamespaces": ["a b"]}}}, "/networkPolicy/send/fromNamespaces/0"),
    ("quantity-bad", {"gateway": {"resources": {"limits": {"memory": "lots"}}}}, "/gateway/resources/limits/memory"),
    ("interval-bad", {"metrics": {"serviceMonitor": {"interval": "often"}}}, "/metrics/serviceMonitor/interval"),
    (
        "autoscaling-min-above-max",
        {"gateway": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}},
        "minReplicas (5) must not exceed gateway.autoscaling.maxReplicas (2)",
    ),
    ("same-ports", {"gateway": {"adminPort": 8080}}, "gateway.port and gateway.adminPort must differ"),
    ("smtp-port-range", {"gateway": {"smtp": {"port": 0}}}, "/gateway/smtp/port"),
    ("smtp-default-account-bad", {"gateway": {"smtp": {"defaultAccount": "billing"}}}, "/gateway/smtp/defaultAccount"),
    ("smtp-network-bad", {"gateway": {"smtp": {"trustedNetworks": ["everyone"]}}}, "/gateway/smtp/trustedNetworks/0"),
    (
        "smtp-implicit-without-tls",
        {"gateway": {"smtp": {"enabled": True, "implicitTlsPort": 4650}}},
        "gateway.smtp.implicitTlsPort needs gateway.smtp.tls.secretName",
    ),
    (
        "smtp-port-clash",
        {"gateway": {"smtp": {"enabled": True, "port": 8081}}},
        "gateway.smtp.port (8081) must differ",
    ),
    (
        "smtp-service-port-clash",
        {"gateway": {"smtp": {"enabled": True, "service": {"port": 8080}}}},
        "gateway.smtp.service.port must differ from gateway.service.port",
    ),
    ("queue-type-unknown", {"gateway": {"queue": {"type": "mysql"}}}, "/gateway/queue/type"),
    ("queue-typo", {"gateway": {"queue": {"concurency": 8}}}, "'concurency' not allowed"),
    ("queue-typo-nested", {"gateway": {"queue": {"sqlite": {"sise": "1Gi"}}}}, "'sise' not allowed"),
    ("queue-concurrency-string", {"gateway": {"queue": {"concurrency": "many"}}}, "/gateway/queue/concurrency"),
    ("queue-concurrency-zero", {"gateway": {"queue": {"concurrency": 0}}}, "/gateway/queue/concurrency"),
    ("queue-retry-delay-float", {"gateway": {"queue": {"retryDelaySeconds": 0.5}}}, "/gateway/queue/retryDelaySeconds"),
    ("queue-size-bad", {"gateway": {"queue": {"sqlite": {"size": "big"}}}}, "/gateway/queue/sqlite/size"),
    ("queue-secret-key-bad", {"gateway": {"queue": {"postgresql": {"secretKey": ""}}}}, "/gateway/queue/postgresql/secretKey"),
    (
        "queue-sqlite-replicas",
        {"gateway": {"queue": {"type": "sqlite"}}},
        "gateway.queue.type sqlite allows one gateway replica (SQLite has one writer and its ReadWriteOnce volume "
        "mounts on one node), but gateway.replicas is 2",
    ),
    (
        "queue-sqlite-autoscaling",
        {"gateway": {"replicas": 1, "queue": {"type": "sqlite"}, "autoscaling": {"enabled": True}}},
        "gateway.queue.type sqlite allows one gateway replica (SQLite has one writer and its ReadWriteOnce volume "
        "mounts on one node), but gateway.autoscaling.enabled is true",
    ),
    (
        "queue-postgresql-without-secret",
        {"gateway": {"queue": {"type": "postgresql"}}},
        "gateway.queue.type postgresql needs gateway.queue.postgresql.existingSecret",
    ),
    (
        "queue-retry-delay-above-max",
        {"gateway": {"queue": {"type": "postgresql", "postgresql": {"existingSecret": "q"}, "retryDelaySeconds": 5000}}},
        "gateway.queue.retryDelaySeconds (5000) must not exceed gateway.queue.maxRetryDelaySeconds (4000)",
    ),
    (
        "replicas-without-leader-election",
        {"operator": {"leaderElection": {"enabled": False}}},
        "operator.leaderElection.enabled is false",
    ),
]


@pytest.mark.parametrize(("values", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_values_are_rejected_with_a_clear_message(helm_offline: Helm, values: dict[str, Any], message: str) -> None:
    with pytest.raises(HelmError) as err:
        helm_offline.template(values=values)
    assert message in err.value.stderr


def test_single_operator_may_run_without_leader_election(helm_offline: Helm) -> None:
    objs = helm_offline.render(values={"operator": {"replicas": 1, "leaderElection": {"enabled": False}}})
    args = _container(_one(objs, "Deployment", "-operator"))["args"]
    assert "--standalone" in args and not [a for a in args if a.startswith("--peering")]
    (role,) = [r for r in _by_kind(objs, "Role") if r["metadata"]["name"].endswith("-operator")]
    assert not [rule for rule in role["rules"] if "leases" in rule["resources"]]


# --------------------------------------------------------------------------- the apiserver accepts what renders


def _dry_run_apply(cluster: ControlPlane, manifests: str) -> list[str]:
    """``kubectl apply --dry-run=server``: the apiserver validates every object
    (schemas, CRD schemas, RBAC escalation rules) without persisting any."""
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", "-o", "name", input=manifests)
    return result.stdout.split()


@pytest.mark.parametrize("non_default", [False, True], ids=["default", "non-default"])
def test_rendered_chart_is_accepted_by_the_apiserver(
    cluster: ControlPlane, helm: Helm, make_namespace: Callable[[], str], non_default: bool
) -> None:
    release_ns = make_namespace()
    values: dict[str, Any] = {}
    if non_default:
        watched = [make_namespace(), make_namespace()]
        values = {**NON_DEFAULT, "watchNamespaces": watched}
    rendered = helm.template(release="mg", namespace=release_ns, values=values, include_crds=True).stdout

    applied = _dry_run_apply(cluster, rendered)

    kinds = {name.split("/")[0] for name in applied}
    expected = {
        "customresourcedefinition.apiextensions.k8s.io",
        "deployment.apps",
        "service",
        "serviceaccount",
        "secret",
        "networkpolicy.networking.k8s.io",
        "poddisruptionbudget.policy",
        "role.rbac.authorization.k8s.io",
        "rolebinding.rbac.authorization.k8s.io",
        "clusterrole.rbac.authorization.k8s.io",
        "clusterrolebinding.rbac.authorization.k8s.io",
        "lease.coordination.k8s.io",
    }
    if non_default:
        expected |= {"horizontalpodautoscaler.autoscaling", "servicemonitor.monitoring.coreos.com", "configmap"}
    assert kinds == expected
    assert len(applied) == len([d for d in yaml.safe_load_all(rendered) if d])


def test_crd_upgrade_step_from_the_docs_applies_the_chart_crds(cluster: ControlPlane) -> None:
    """Helm never upgrades crds/, so docs/install.md says `kubectl apply -f charts/mailgate/crds/`:
    kubectl must follow the symlink to the generated CRD."""
    applied = _dry_run_apply_dir(cluster, CHART / "crds")
    assert applied == ["customresourcedefinition.apiextensions.k8s.io/smtpaccounts.mailgate.dev"]


def _dry_run_apply_dir(cluster: ControlPlane, directory: Path) -> list[str]:
    return cluster.kubectl("apply", "--dry-run=server", "-f", str(directory), "-o", "name").stdout.split()
