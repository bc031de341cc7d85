"""The chart end to end: installed into the test apiserver, its command lines run
as local processes under the identities of its ServiceAccounts, mail delivered.

No kubelet runs the chart's pods, so the test plays kubelet: it takes each
container's args from the installed Deployment, swaps only what a pod would get
from its environment (addresses, ports, the mounted admin-token file, the
ServiceAccount credentials, here as a kubeconfig holding that ServiceAccount's
token), starts the processes and registers the gateways as Pods with the
chart's labels. So the chart's RBAC, selector, Lease and token Secret are what
is tested, not a test's own setup.
"""

from __future__ import annotations

import base64
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.k8s.cluster import ControlPlane, free_ports, tail
from tests.k8s.helm.helm import Helm
from tests.k8s.operator.harness import OperatorProcess, eventually, http

RELEASE = "mg"
OPERATOR_SA = f"{RELEASE}-mailgate-operator"
GATEWAY_SA = f"{RELEASE}-mailgate-gateway"
LEASE = f"{RELEASE}-mailgate-operator"


def _container(cluster: ControlPlane, namespace: str, deployment: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The installed Deployment's container and its pod labels."""
    obj = cluster.get("deployment", deployment, namespace)
    assert obj is not None, deployment
    template = obj["spec"]["template"]
    (container,) = template["spec"]["containers"]
    return container, template["metadata"]["labels"]


def _localised(args: list[str], **overrides: str) -> list[str]:
    """The chart's args with ``--flag=value`` replaced for a local process (keys use _ for -)."""
    wanted = {f"--{key.replace('_', '-')}": value for key, value in overrides.items()}
    result = []
    for arg in args:
        flag = arg.split("=", 1)[0]
        result.append(f"{flag}={wanted.pop(flag)}" if flag in wanted else arg)
    assert not wanted, f"the chart no longer passes {sorted(wanted)}"
    return result


class _Processes:
    """Every process a test starts, always stopped (SIGTERM, then SIGKILL)."""

    def __init__(self) -> None:
        self.gateways: list[tuple[subprocess.Popen[bytes], Path]] = []
        self.operators: list[OperatorProcess] = []

    def gateway(self, argv: list[str], log_path: Path, url: str) -> None:
        with log_path.open("ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=_clean_env())
        self.gateways.append((proc, log_path))

        def listening() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"gateway exited with {proc.returncode}: {tail(log_path)}")
            try:
                return http("GET", f"{url}/livez", timeout=1)[0] == 200
            except OSError:
                return False

        eventually(listening, f"gateway {url} to listen", timeout=30)

    def stop(self) -> None:
        for operator in self.operators:
            operator.stop()
        for proc, _ in self.gateways:
            if proc.poll() is None:
                proc.terminate()
        for proc, _ in self.gateways:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    return {**env, **extra}


@pytest.fixture
def processes() -> Iterator[_Processes]:
    started = _Processes()
    yield started
    started.stop()


def test_chart_runs_operator_and_gateways_under_its_service_accounts(
    cluster: ControlPlane,
    helm: Helm,
    make_namespace: Callable[[], str],
    upstream_factory: Callable[..., Any],
    processes: _Processes,
    tmp_path: Path,
) -> None:
    ns, shop = make_namespace(), make_namespace()
    helm.install(RELEASE, ns, {"watchNamespaces": [shop]})

    # What each pod would mount: the admin token Secret and its ServiceAccount's credentials.
    secret = cluster.get("secret", f"{RELEASE}-mailgate-admin-token", ns)
    assert secret is not None
    token_file = tmp_path / "admin-token"
    token_file.write_bytes(base64.b64decode(secret["data"]["token"]))
    gateway_kubeconfig = cluster.service_account_kubeconfig(ns, GATEWAY_SA, tmp_path / "gateway.kubeconfig")
    operator_kubeconfig = cluster.service_account_kubeconfig(ns, OPERATOR_SA, tmp_path / "operator.kubeconfig")

    # Two gateways, as the chart's Deployment describes them, on loopback "pod IPs".
    gateway_container, gateway_labels = _container(cluster, ns, f"{RELEASE}-mailgate-gateway")
    send_port, admin_port = free_ports(2)
    net = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}"
    gateway_urls = []
    for index in (1, 2):
        ip = f"{net}.{index}"
        args = _localised(
            gateway_container["args"], host=ip, port=str(send_port), admin_port=str(admin_port), admin_token_file=str(token_file)
        )
        argv = [sys.executable, "-m", "mailgate", *args, f"--kubeconfig={gateway_kubeconfig}", "--shutdown-delay=0"]
        url = f"http://{ip}:{send_port}"
        processes.gateway(argv, tmp_path / f"gateway-{index}.log", url)
        cluster.register_pod(ns, f"gw-{index}", ip, gateway_labels)
        gateway_urls.append(url)

    # Both operator replicas, under the operator ServiceAccount: one wins the Lease.
    operator_container, _ = _container(cluster, ns, f"{RELEASE}-mailgate-operator")
    for replica in (0, 1):
        health, metrics = free_ports(2)
        args = _localised(
            operator_container["args"],
            admin_token_file=str(token_file),
            admin_port=str(admin_port),
            send_port=str(send_port),
            health_port=str(health),
            metrics_port=str(metrics),
        )
        argv = [sys.executable, "-m", "mailgate", *args, "--bind-address=127.0.0.1"]
        env = _clean_env(KUBECONFIG=str(operator_kubeconfig), POD_NAME=f"operator-{replica}")
        processes.operators.append(OperatorProcess(argv, env, health, metrics, tmp_path / f"operator-{replica}.log").start())

    lease = eventually(lambda: (cluster.get("lease", LEASE, ns) or {}).get("spec", {}).get("holderIdentity"), "a Lease holder")
    leaders = [op.metric("mailgate_operator_leader") for op in processes.operators]
    assert sorted(leaders) == [0.0, 1.0], leaders
    assert lease.startswith(f"operator-{leaders.index(1.0)}")

    # The user's part: a Secret and an SmtpAccount, applied with kubectl.
    upstream = upstream_factory(users={"relay": "sentinel-password-7f3a"})
    cluster.create_secret(shop, "relay-smtp", {"username": "relay", "password": "sentinel-password-7f3a"})
    cluster.apply(
        {
            "apiVersion": "mailgate.dev/v1alpha1",
            "kind": "SmtpAccount",
            "metadata": {"name": "relay", "namespace": shop},
            "spec": {
                "server": {"host": "127.0.0.1", "port": upstream.port, "tls": "none"},
                "auth": {"method": "login", "secretRef": {"name": "relay-smtp"}},
                "senders": ["*@shop.example"],
                "access": {"serviceAccounts": [f"{shop}/checkout"]},
            },
        }
    )

    def ready() -> bool:
        obj = cluster.get("smtpaccount", "relay", shop) or {}
        conditions = {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions", [])}
        return conditions.get("Ready") == "True"

    eventually(ready, "SmtpAccount relay Ready", timeout=20)

    # An app with its own ServiceAccount token (audience mailgate) sends through each gateway.
    cluster.create_service_account(shop, "checkout")
    cluster.create_service_account(shop, "intruder")
    caller = cluster.token(shop, "checkout", audience="mailgate")
    path = f"/v1/accounts/{shop}/relay/messages"
    for index, url in enumerate(gateway_urls, start=1):
        mail = {"from": "orders@shop.example", "to": ["buyer@example.net"], "subject": f"via gateway {index}", "text": "hi"}
        code, body = http("POST", f"{url}{path}", mail, token=caller, timeout=30)
        assert code == 200, body
        upstream.wait_messages(index)
    subjects = sorted(m.data.split(b"Subject: ")[1].split(b"\r\n")[0] for m in upstream.messages)
    assert subjects == [b"via gateway 1", b"via gateway 2"]

    # The gateways really judge callers with TokenReviews (the chart's only grant to them).
    intruder = cluster.token(shop, "intruder", audience="mailgate")
    message = {"from": "orders@shop.example", "to": ["buyer@example.net"], "subject": "no", "text": "no"}
    assert http("POST", f"{gateway_urls[0]}{path}", message, token=intruder)[0] == 403
    assert http("POST", f"{gateway_urls[0]}{path}", message)[0] == 401

    # Removing the account goes through the operator (finalizer), then the release goes.
    cluster.kubectl("delete", "smtpaccount", "relay", "-n", shop, "--wait=false")
    eventually(lambda: cluster.get("smtpaccount", "relay", shop) is None, "SmtpAccount relay to be finalized", timeout=30)
    assert http("POST", f"{gateway_urls[1]}{path}", message, token=caller)[0] == 404
    for operator in processes.operators:
        assert "sentinel-password-7f3a" not in operator.log
    processes.stop()

    helm.uninstall(RELEASE, ns)
    assert helm.releases(ns) == []
    for where in (ns, shop):
        leftover = cluster.kubectl(
            "get", "deployments,services,secrets,roles,rolebindings,leases", "-n", where,  # the Lease is the chart's too
            "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "name",
        )  # fmt: skip
        assert leftover.stdout.split() == [], where
