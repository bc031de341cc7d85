"""Real processes for operator tests: gateways on 127.x.y.z registered as Pods, and the operator itself.

There is no kubelet: a test plays it. It starts ``mailgate gateway`` on a
loopback address, creates a Pod object with that IP (``register_pod``) and
flips its Ready condition as a readiness probe would. The operator runs as a
subprocess (``python -m mailgate operator``) with the control plane's
kubeconfig, exactly as in a cluster, and is stopped with SIGTERM.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from tests.k8s.cluster import REPO_ROOT, ControlPlane, free_ports, tail, wait_for

GATEWAY_LABELS = {"app.kubernetes.io/component": "gateway"}
SELECTOR = "app.kubernetes.io/component=gateway"
T = TypeVar("T")



def object_path(namespace: str, kind: str, name: str = "") -> str:
    """The API path of a Secret or SmtpAccount (``kind``: ``secrets``, ``smtpaccounts``) or of their collection."""
    base = {
        "secrets": f"/api/v1/namespaces/{namespace}/secrets",
        "smtpaccounts": f"/apis/mailgate.dev/v1alpha1/namespaces/{namespace}/smtpaccounts",
    }[kind]
    return f"{base}/{name}" if name else base

class Answer(NamedTuple):
    """An HTTP answer with its headers (a secret-hygiene test searches those too)."""

    status: int
    body: Any  # parsed JSON, or text
    headers: dict[str, str]


def exchange(method: str, url: str, body: Any = None, *, token: str | None = None, timeout: float = 10) -> Answer:
    """One HTTP call; HTTP errors are answers, not exceptions."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw, headers = response.status, response.read(), dict(response.headers.items())
    except urllib.error.HTTPError as error:
        with error:
            status, raw, headers = error.code, error.read(), dict(error.headers.items())
    text = raw.decode(errors="replace")
    try:
        return Answer(status, json.loads(text), headers)
    except ValueError:
        return Answer(status, text, headers)


def http(method: str, url: str, body: Any = None, *, token: str | None = None, timeout: float = 10) -> tuple[int, Any]:
    """One HTTP call: (status, parsed JSON or text); HTTP errors are answers, not exceptions."""
    answer = exchange(method, url, body, token=token, timeout=timeout)
    return answer.status, answer.body


def eventually(check: Callable[[], T | None], what: str, timeout: float = 20.0) -> T:
    """Poll until ``check`` returns something truthy (a condition with a deadline, never a bare sleep)."""
    return wait_for(check, timeout=timeout, what=what, interval=0.05)


def _stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@dataclass
class GatewayProcess:
    """One ``mailgate gateway`` on its own loopback IP; the Pod of the same name is the test's to manage."""

    name: str
    ip: str
    send_port: int
    admin_port: int
    token: str
    token_file: Path
    log_path: Path
    extra_args: tuple[str, ...] = ()
    auth_args: tuple[str, ...] = ("--insecure-no-auth",)  # how callers authenticate
    proc: subprocess.Popen[bytes] | None = None

    @property
    def send_url(self) -> str:
        return f"http://{self.ip}:{self.send_port}"

    def start(self) -> GatewayProcess:
        argv = [
            sys.executable, "-m", "mailgate", "gateway", "--host", self.ip, "--port", str(self.send_port),
            "--admin-port", str(self.admin_port), "--admin-token-file", str(self.token_file),
            *self.auth_args, "--upstream-timeout", "5", *self.extra_args,
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        eventually(self._alive, f"gateway {self.name} to listen", timeout=30)
        return self

    def _alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"gateway {self.name} exited: {tail(self.log_path)}")
        try:
            return http("GET", f"{self.send_url}/livez", timeout=1)[0] == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None

    def kill(self) -> None:
        """A crash: no graceful shutdown."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def status(self) -> dict[str, Any]:
        code, body = http("GET", f"http://{self.ip}:{self.admin_port}/v1/status", token=self.token, timeout=5)
        assert code == 200, body
        return body

    def account(self, key: str) -> dict[str, Any] | None:
        return self.status()["accounts"].get(key)

    def ready(self) -> bool:
        try:
            return http("GET", f"{self.send_url}/readyz", timeout=2)[0] == 200
        except OSError:
            return False

    def post(self, key: str, *, token: str | None = None, **message: Any) -> Answer:
        """One message through the send API, as the caller holding ``token`` (None: no Authorization)."""
        body = {"from": "app@shop.example", "to": ["rcpt@example.net"], "subject": "hi", "text": "hello", **message}
        return exchange("POST", f"{self.send_url}/v1/accounts/{key}/messages", body, token=token, timeout=30)

    def send(self, key: str, *, token: str | None = None, **message: Any) -> tuple[int, Any]:
        answer = self.post(key, token=token, **message)
        return answer.status, answer.body


@dataclass
class OperatorProcess:
    """``mailgate operator`` as a subprocess, with its own health and metrics ports."""

    argv: list[str]
    env: dict[str, str]
    health_port: int
    metrics_port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO_ROOT)
        eventually(self._healthy, "operator /healthz", timeout=30)
        return self

    def _healthy(self) -> bool:
        self.check_alive()
        try:
            return http("GET", f"http://127.0.0.1:{self.health_port}/healthz", timeout=1)[0] == 200
        except OSError:
            return False

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}: {tail(self.log_path, 60)}")

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples over the label sets that have ``labels``."""
        code, text = http("GET", f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5)
        assert code == 200
        total = 0.0
        wanted = [f'{label}="{value}"' for label, value in labels.items()]
        for line in str(text).splitlines():
            if line.startswith(name) and line[len(name)] in " {" and all(w in line for w in wanted):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> int:
        code = _stop(self.proc) if self.proc is not None else 0
        self.proc = None
        return code

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class Mesh:
    """Gateways, their Pods and operators for one test, in a gateway namespace of its own."""

    cp: ControlPlane
    namespace: str  # where SmtpAccounts and Secrets live
    gateway_namespace: str
    workdir: Path
    token: str = field(default_factory=lambda: f"admin-{random.getrandbits(64):x}")
    gateways: dict[str, GatewayProcess] = field(default_factory=dict)
    operators: list[OperatorProcess] = field(default_factory=list)
    _reviewer: Path | None = None  # the gateways' kubeconfig for TokenReviews, made on first use
    _callers: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.send_port, self.admin_port = free_ports(2)
        self.token_file = self.workdir / "admin-token"
        self.token_file.write_text(self.token + "\n")
        self._net = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}"

    # -- gateways

    def ip(self, index: int) -> str:
        """This test's loopback address number ``index`` (127.a.b.index, a and b random per test)."""
        return f"{self._net}.{index}"

    def gateway(
        self, name: str, *, index: int, ready: bool = True, register: bool = True, extra_args: tuple[str, ...] = (),
        token_review: bool = False,
    ) -> GatewayProcess:  # fmt: skip
        """Start a gateway on 127.a.b.<index> and (by default) register its Pod, Ready or not.

        ``token_review``: callers authenticate with ServiceAccount tokens that the
        gateway checks with TokenReviews, as in a cluster (``caller_token`` makes
        them); otherwise any caller may use any account.
        """
        auth = ("--kubeconfig", str(self.token_reviewer())) if token_review else ("--insecure-no-auth",)
        gateway = GatewayProcess(
            name, self.ip(index), self.send_port, self.admin_port, self.token, self.token_file,
            self.workdir / f"{name}.log", extra_args, auth,
        ).start()  # fmt: skip
        self.gateways[name] = gateway
        if register:
            self.cp.register_pod(self.gateway_namespace, name, gateway.ip, GATEWAY_LABELS, ready=ready)
        return gateway

    def token_reviewer(self) -> Path:
        """The gateways' kubeconfig: ServiceAccount ``gateway`` of the gateway namespace, allowed TokenReviews only."""
        if self._reviewer is None:
            path = self.workdir / "gateway-kubeconfig"
            self._reviewer = self.cp.token_reviewer_kubeconfig(self.gateway_namespace, "gateway", path)
        return self._reviewer

    def caller_token(self, service_account: str = "sender") -> str:
        """A new token (audience ``mailgate``) of ServiceAccount ``service_account`` in the accounts' namespace."""
        if service_account not in self._callers:
            self.cp.create_service_account(self.namespace, service_account)
            self._callers.add(service_account)
        return self.cp.token(self.namespace, service_account)

    def set_ready(self, name: str, ready: bool) -> None:
        self.cp.set_pod_ready(self.gateway_namespace, name, ready)

    def remove_gateway(self, name: str) -> None:
        self.cp.delete_pod(self.gateway_namespace, name)
        self.gateways.pop(name).stop()

    # -- operators

    def operator(self, *extra: str, namespaces: tuple[str, ...] | None = None, resync: float = 2.0) -> OperatorProcess:
        health, metrics = free_ports(2)
        spaces = (self.namespace,) if namespaces is None else namespaces
        argv = [
            sys.executable, "-m", "mailgate", "operator",
            "--gateway-namespace", self.gateway_namespace, "--gateway-selector", SELECTOR,
            "--admin-token-file", str(self.token_file), "--admin-port", str(self.admin_port),
            "--send-port", str(self.send_port), "--health-port", str(health), "--metrics-port", str(metrics),
            "--bind-address", "127.0.0.1", "--resync-seconds", str(resync),
            *(arg for ns in spaces for arg in ("--namespace", ns)),
            *(extra or ("--standalone",)),
        ]  # fmt: skip
        env = {**os.environ, "KUBECONFIG": str(self.cp.kubeconfig)}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        log_path = self.workdir / f"operator-{len(self.operators)}.log"
        operator = OperatorProcess(argv, env, health, metrics, log_path).start()
        self.operators.append(operator)
        return operator

    # -- objects (plain API calls: a kubectl process per step would dominate the test time)

    def _path(self, kind: str, name: str = "") -> str:
        return object_path(self.namespace, kind, name)

    def _create_or_patch(self, kind: str, body: dict[str, Any], patch: dict[str, Any]) -> None:
        code, answer = self.cp.request("POST", self._path(kind), body)
        if code == 409:
            code, answer = self.cp.request("PATCH", self._path(kind, body["metadata"]["name"]), patch)
        assert code in (200, 201), answer

    def secret(self, name: str, data: dict[str, str]) -> None:
        """Create the Secret, or replace its data (a rotation is an update, never a gap)."""
        body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": self.namespace}}
        self._create_or_patch("secrets", {**body, "stringData": data}, {"data": None, "stringData": data})

    def delete(self, kind: str, name: str) -> None:
        code, answer = self.cp.request("DELETE", self._path(kind, name))
        assert code in (200, 202), answer

    def account_body(self, name: str, upstream: Any, **spec: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "server": {"host": "127.0.0.1", "port": upstream.port, "tls": "none"},
            "auth": {"method": "login", "secretRef": {"name": f"{name}-smtp"}},
            "senders": ["*@shop.example"],
        }
        body.update(spec)
        return {
            "apiVersion": "mailgate.dev/v1alpha1",
            "kind": "SmtpAccount",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": body,
        }

    def apply_account(self, name: str, upstream: Any, **spec: Any) -> None:
        body = self.account_body(name, upstream, **spec)
        self._create_or_patch("smtpaccounts", body, {"spec": body["spec"]})

    def patch_account(self, name: str, patch: dict[str, Any]) -> None:
        """A merge patch of the spec (or, with a ``metadata`` key, of the whole object)."""
        body = patch if "metadata" in patch else {"spec": patch}
        code, answer = self.cp.request("PATCH", self._path("smtpaccounts", name), body)
        assert code == 200, answer

    def account(self, name: str) -> dict[str, Any] | None:
        """The SmtpAccount as JSON (a plain API call: polling with kubectl would cost a process per poll)."""
        code, body = self.cp.request("GET", self._path("smtpaccounts", name))
        if code == 404:
            return None
        assert code == 200, body
        return body

    def condition(self, name: str, kind: str) -> dict[str, Any] | None:
        obj = self.account(name) or {}
        return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == kind), None)

    def wait_condition(
        self, name: str, kind: str, status: str, reason: str | None = None, *, generation: int | None = None,
        timeout: float = 20.0,
    ) -> dict[str, Any]:  # fmt: skip
        def check() -> dict[str, Any] | None:
            for operator in self.operators:
                if operator.proc is not None:
                    operator.check_alive()
            condition = self.condition(name, kind)
            if (
                condition
                and condition["status"] == status
                and (reason is None or condition["reason"] == reason)
                and (generation is None or condition.get("observedGeneration") == generation)
            ):
                return condition
            return None

        return eventually(check, f"{name}: {kind}={status} {reason or ''}", timeout)

    def wait_served(self, key: str, check: Callable[[dict[str, Any]], bool], what: str, timeout: float = 20.0) -> None:
        """Until every running gateway reports ``key`` and ``check`` holds for each report."""

        def all_ok() -> bool:
            reports = [gateway.account(key) for gateway in self.gateways.values() if gateway.proc is not None]
            return bool(reports) and all(report is not None and check(report) for report in reports)

        eventually(all_ok, what, timeout)

    def events(self, name: str) -> list[dict[str, Any]]:
        code, body = self.cp.request(
            "GET", f"/api/v1/namespaces/{self.namespace}/events?fieldSelector=involvedObject.name%3D{name}"
        )
        assert code == 200, body
        return body["items"]

    def close(self) -> None:
        for operator in self.operators:
            operator.stop()
        for gateway in self.gateways.values():
            gateway.stop()
        if self._reviewer is not None:
            self.cp.delete_token_reviewer(self.gateway_namespace)
            self._reviewer = None
