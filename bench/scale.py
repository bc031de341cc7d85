"""``python -m bench.scale``: what N realistic accounts cost a gateway, ``mailgate serve`` and the operator.

Every account is what a real upstream needs: STARTTLS on port 587 (system
trust store, certificate verified), ``auth: login`` with its own username and
password, one sender, ``maxConnections: 3``. The upstream host is 127.0.0.1
and nothing listens on 587: nothing is sent in the measurements, so nothing
connects (an account costs only what it costs while idle). N is 10,000
(2,000 with ``--quick``).

- ``kb_per_tls_account``: a ``mailgate gateway`` process configured through
  its admin API. Its RSS (``/proc/<pid>/status`` VmRSS, once it stops
  moving) holding an empty snapshot, then holding N accounts:
  (RSS_N - RSS_0) / N in KiB;
- ``snapshot_apply_s``: the ``PUT /v1/config`` of the full N-account
  snapshot to that gateway (which holds none), request to answer: the
  upload, validation and apply, as the operator sees it for a new pod.
  ``unchanged_snapshot_apply_s`` is the next full snapshot, in which one
  account differs;
- ``one_change_apply_ms``: the median ``PUT /v1/config/accounts/...`` of one
  account among N, alternating a password rotation and a spec edit, each on
  another account (``http_rtt_ms``: a ``GET /livez`` of the same process,
  for scale);
- ``first_send_ms`` (skip with ``--no-send``): then one more account is
  added, pointing at a real aiosmtpd STARTTLS upstream with a private CA
  and AUTH, and one message is sent through it: its first send opens the
  pool lazily (connect, STARTTLS, AUTH, transaction);
- ``serve_ready_s``: ``mailgate serve -f`` on two YAML files (N Secrets with
  ``stringData``, N SmtpAccounts), process start to ``/readyz`` 200;
  ``serve_ready_baseline_s`` is the same with one account (interpreter and
  imports), ``serve_rss_mb`` the RSS once ready;
- ``operator_reconcile_s`` and ``operator_rss_mb`` (skip with
  ``--no-operator``): a real kube-apiserver and etcd, M SmtpAccounts and M
  Secrets in it (M = N, 200 with ``--quick``: ``operator_accounts`` says
  which), one gateway registered as a Pod; then the operator starts:
  ``operator_reconcile_s`` is operator start to the gateway serving all M,
  ``operator_status_s`` to every SmtpAccount's ``Ready`` condition being
  ``True``, ``operator_rss_mb`` the operator's RSS once that is done.
  ``operator_change_s`` is the median time from the apiserver accepting a
  change of one account to the gateway applying it, and
  ``operator_change_full_pushes`` the full snapshots the operator sent
  meanwhile (0: it re-sent nothing else). The operator gets
  ``--operator-timeout`` seconds (900; 60 with ``--quick``) to serve every
  account: past it, ``operator_reconcile_s`` is null and ``operator_served``
  says how many the gateway served by then.

Prints a table, then as the LAST line one JSON object with those keys plus
``accounts`` (N) and ``operator_accounts`` (M). Targets (issue 13, for N =
10,000): ``kb_per_tls_account`` <= 20, ``snapshot_apply_s`` <= 2,
``one_change_apply_ms`` <= 20, ``serve_ready_s`` <= 5. ``--quick`` stays
under 90 s on two cores. Every server is on 127.0.0.0/8 and every wait has a
deadline.

``python -m bench.scale profile [--accounts N]`` profiles the same work in
this process (cProfile): validating and applying a full snapshot (inside the
admin API's cycle-collector pause) to an
``AccountRegistry`` and ``SMTPPool`` built as ``mailgate gateway`` builds
them, one changed account among N, and ``mailgate serve``'s YAML load; it
prints the top entries by cumulative time for each.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import http.client
import io
import json
import os
import pstats
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import LOOPBACK, REPO, format_table, free_port, stop_process, wait_listening

NAMESPACE = "bench"
ADMIN_TOKEN = "bench-scale-admin-token"
UPSTREAM_HOST = LOOPBACK  # nothing listens on 587 there: nothing is sent, so nothing connects
UPSTREAM_PORT = 587
SENDER_DOMAIN = "shop.example"
TARGETS = {"kb_per_tls_account": 20.0, "snapshot_apply_s": 2.0, "one_change_apply_ms": 20.0, "serve_ready_s": 5.0}
TARGET_ACCOUNTS = 10_000


def account_name(index: int) -> str:
    return f"acct-{index:05d}"


def account_spec(index: int, *, ttl: int = 300) -> dict[str, Any]:
    """A realistic SmtpAccount spec: STARTTLS on 587 with the system store, AUTH LOGIN, one sender, 3 connections."""
    name = account_name(index)
    return {
        "server": {"host": UPSTREAM_HOST, "port": UPSTREAM_PORT, "tls": "starttls"},
        "auth": {"method": "login", "secretRef": {"name": f"{name}-smtp"}},
        "pool": {"maxConnections": 3, "ttlSeconds": ttl},
        "senders": [f"{name}@{SENDER_DOMAIN}"],
    }


def account_config(index: int, *, password: str = "initial", ttl: int = 300) -> dict[str, Any]:
    """One account of an admin API snapshot (credentials resolved, as the operator sends them)."""
    name = account_name(index)
    return {
        "namespace": NAMESPACE,
        "name": name,
        "spec": account_spec(index, ttl=ttl),
        "credentials": {"username": f"{name}@{SENDER_DOMAIN}", "password": f"{password}-{index}"},
    }


def snapshot_body(count: int, revision: int, changed: int | None = None) -> bytes:
    """The JSON of a full snapshot; account ``changed`` (if any) has a rotated password."""
    accounts = [account_config(i, password="rotated" if i == changed else "initial") for i in range(count)]
    return json.dumps({"revision": revision, "accounts": accounts}).encode()


# -- processes and their memory ----------------------------------------------------------------


def rss_kb(pid: int) -> int:
    """VmRSS of a process in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def settled_rss_kb(pid: int, *, first: float = 1.0, timeout: float = 8.0, tolerance_kb: int = 256) -> int:
    """RSS once it stops moving: after ``first`` seconds, until two samples 0.25 s apart agree (or ``timeout``).

    A measurement settle, not a synchronisation: memory has no event to
    await, and the issue's figures were read two seconds after start-up.
    """
    time.sleep(first)
    deadline = time.monotonic() + timeout
    last = rss_kb(pid)
    while True:
        time.sleep(0.25)
        now = rss_kb(pid)
        if abs(now - last) <= tolerance_kb or time.monotonic() > deadline:
            return now
        last = now


@contextlib.contextmanager
def running(command: list[str], what: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A child process for the block (stderr kept for the report), stopped with SIGTERM, then SIGKILL."""
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    errors = io.BytesIO()
    reader = threading.Thread(target=_drain, args=(process, errors), daemon=True)
    reader.start()
    try:
        yield process
    finally:
        stop_process(process)
        reader.join(5)
        text = errors.getvalue().decode(errors="replace").strip()
        if text:
            print(f"{what} log (warnings and errors):\n{text[-4000:]}", file=sys.stderr)


def _drain(process: subprocess.Popen[bytes], sink: io.BytesIO) -> None:
    """Read a child's stderr as it comes: a full pipe would block the child."""
    assert process.stderr is not None
    for line in process.stderr:
        sink.write(line)
    process.stderr.close()


class Http:
    """One keep-alive HTTP connection to 127.0.0.1:port: a timed request is not also a TCP handshake."""

    def __init__(self, port: int, token: str | None = None, timeout: float = 300.0) -> None:
        self.connection = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = dict(self.headers)
        if body is not None:
            headers["Content-Type"] = "application/json"
        self.connection.request(method, path, body=body, headers=headers)
        answer = self.connection.getresponse()
        return answer.status, answer.read()

    def close(self) -> None:
        self.connection.close()


def wait_until(check: Callable[[], bool], what: str, timeout: float, interval: float = 0.05) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def answers_200(port: int, path: str) -> bool:
    try:
        connection = http.client.HTTPConnection(LOOPBACK, port, timeout=2)
        try:
            connection.request("GET", path)
            return connection.getresponse().status == 200
        finally:
            connection.close()
    except OSError:
        return False


# -- the gateway through its admin API -------------------------------------------------------


@dataclass
class GatewayFigures:
    rss_0_kb: int
    rss_n_kb: int
    snapshot_apply_s: float
    unchanged_snapshot_apply_s: float
    changes_ms: list[float]
    http_rtt_ms: float
    first_send_ms: float | None


def measure_gateway(count: int, changes: int, send: bool) -> GatewayFigures:
    port, admin_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "mailgate", "gateway", "--host", LOOPBACK, "--port", str(port),
        "--admin-port", str(admin_port), "--insecure-no-auth", "--log-level", "warning",
        "--hostname", "bench.mailgate.test", "--ehlo-hostname", "bench.mailgate.test", "--shutdown-grace", "5",
    ]  # fmt: skip
    env = {**os.environ, "MAILGATE_ADMIN_TOKEN": ADMIN_TOKEN}
    full = snapshot_body(count, revision=2)
    with running(command, "gateway", env) as process:
        wait_listening(admin_port, timeout=30, process=process)
        admin = Http(admin_port, ADMIN_TOKEN)
        try:
            _expect(admin.call("PUT", "/v1/config", json.dumps({"revision": 1, "accounts": []}).encode()), 200)
            rss_0 = settled_rss_kb(process.pid)
            started = time.perf_counter()
            _expect(admin.call("PUT", "/v1/config", full), 200)
            apply_s = time.perf_counter() - started
            del full
            rss_n = settled_rss_kb(process.pid)
            again = snapshot_body(count, revision=3, changed=count // 2)
            started = time.perf_counter()
            _expect(admin.call("PUT", "/v1/config", again), 200)
            unchanged_s = time.perf_counter() - started
            del again
            revision = 3
            changes_ms = []
            for step in range(changes):
                revision += 1
                index = (step * 7919) % count  # spread over the registry, each account once
                if step % 2:
                    config = account_config(index, ttl=600 + step)
                else:
                    config = account_config(index, password=f"rotation-{step}")
                body = json.dumps(config).encode()
                path = f"/v1/config/accounts/{NAMESPACE}/{account_name(index)}?revision={revision}"
                started = time.perf_counter()
                _expect(admin.call("PUT", path, body), 200)
                changes_ms.append((time.perf_counter() - started) * 1000)
            sender = Http(port)
            try:
                rtts = []
                for _ in range(20):
                    started = time.perf_counter()
                    _expect(sender.call("GET", "/livez"), 200)
                    rtts.append((time.perf_counter() - started) * 1000)
            finally:
                sender.close()
            first_send_ms = lazy_send(admin, port, revision + 1) if send else None
        finally:
            admin.close()
    return GatewayFigures(rss_0, rss_n, apply_s, unchanged_s, changes_ms, statistics.median(rtts), first_send_ms)


def lazy_send(admin: Http, port: int, revision: int) -> float:
    """Add an account on a real STARTTLS upstream (private CA, AUTH) and time its first send: the pool opens then."""
    from tests.smtp_servers import TestCA, Upstream

    ca = TestCA()
    upstream = Upstream(tls="starttls", ca=ca, users={"lazy@shop.example": "lazy-password"}).start()
    try:
        config = {
            "namespace": NAMESPACE,
            "name": "lazy",
            "spec": {
                "server": {"host": LOOPBACK, "port": upstream.port, "tls": "starttls", "caCertificate": ca.ca_pem},
                "auth": {"method": "login", "secretRef": {"name": "lazy-smtp"}},
                "pool": {"maxConnections": 3},
                "senders": ["lazy@shop.example"],
            },
            "credentials": {"username": "lazy@shop.example", "password": "lazy-password"},
        }
        _expect(admin.call("PUT", f"/v1/config/accounts/{NAMESPACE}/lazy?revision={revision}", json.dumps(config).encode()), 200)
        message = {"from": "lazy@shop.example", "to": ["rcpt@example.net"], "subject": "scale", "text": "hello"}
        sender = Http(port)
        try:
            started = time.perf_counter()
            status, body = sender.call("POST", f"/v1/accounts/{NAMESPACE}/lazy/messages", json.dumps(message).encode())
            elapsed = time.perf_counter() - started
        finally:
            sender.close()
        if status != 200:
            raise RuntimeError(f"the send through the lazy account answered {status}: {body[:500]!r}")
        received = upstream.wait_messages(1, timeout=10)
        assert received[0].login == "lazy@shop.example", received[0]
        return elapsed * 1000
    finally:
        upstream.stop()


def _expect(answer: tuple[int, bytes], status: int) -> bytes:
    if answer[0] != status:
        raise RuntimeError(f"expected {status}, got {answer[0]}: {answer[1][:500]!r}")
    return answer[1]


# -- mailgate serve ----------------------------------------------------------------------------


def write_yaml(directory: Path, count: int) -> list[Path]:
    """N Secrets (stringData) and N SmtpAccounts in two files, as ``kubectl apply -f`` takes them."""
    secrets, accounts = directory / "secrets.yaml", directory / "accounts.yaml"
    with secrets.open("w") as out:
        for index in range(count):
            name = account_name(index)
            out.write(
                f"---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}-smtp\n  namespace: {NAMESPACE}\n"
                f"type: Opaque\nstringData:\n  username: {name}@{SENDER_DOMAIN}\n  password: initial-{index}\n"
            )
    with accounts.open("w") as out:
        for index in range(count):
            name = account_name(index)
            out.write(
                f"---\napiVersion: mailgate.dev/v1alpha1\nkind: SmtpAccount\n"
                f"metadata:\n  name: {name}\n  namespace: {NAMESPACE}\nspec:\n"
                f"  server:\n    host: {UPSTREAM_HOST}\n    port: {UPSTREAM_PORT}\n    tls: starttls\n"
                f"  auth:\n    method: login\n    secretRef:\n      name: {name}-smtp\n"
                f"  pool:\n    maxConnections: 3\n  senders:\n    - {name}@{SENDER_DOMAIN}\n"
            )
    return [secrets, accounts]


def measure_serve(count: int, timeout: float) -> tuple[float, int]:
    """Seconds from starting ``mailgate serve -f`` to ``/readyz`` 200, and the RSS (KiB) once ready."""
    with tempfile.TemporaryDirectory(prefix="mailgate-scale-") as tmp:
        files = write_yaml(Path(tmp), count)
        port = free_port()
        command = [
            sys.executable, "-m", "mailgate", "serve", *(arg for f in files for arg in ("-f", str(f))),
            "--insecure-no-auth", "--host", LOOPBACK, "--port", str(port), "--log-level", "error",
        ]  # fmt: skip
        started = time.perf_counter()
        with running(command, "mailgate serve") as process:

            def ready() -> bool:
                if process.poll() is not None:
                    raise RuntimeError(f"mailgate serve exited with status {process.returncode}")
                return answers_200(port, "/readyz")

            wait_until(ready, f"mailgate serve with {count} accounts to answer /readyz", timeout, interval=0.02)
            elapsed = time.perf_counter() - started
            return elapsed, settled_rss_kb(process.pid, first=0.5)


# -- the operator against a real apiserver -----------------------------------------------------


@dataclass
class OperatorFigures:
    setup_s: float
    served: int = 0  # accounts the gateway served at the end (all of them, unless the deadline passed)
    ready: int = 0  # SmtpAccounts with Ready=True at the end
    reconcile_s: float | None = None  # None: not every account served by the deadline
    status_s: float | None = None
    rss_kb: int = 0
    changes_s: list[float] = field(default_factory=list)
    full_pushes: float | None = None


class ApiWriter:
    """Creates objects over one keep-alive HTTPS connection per thread (``ControlPlane.request`` connects per call)."""

    def __init__(self, cp: Any) -> None:
        port = int(cp.server.rsplit(":", 1)[1])
        if cp.ca_file is not None:
            context = ssl.create_default_context(cafile=str(cp.ca_file))
        else:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self.port, self.context, self.token = port, context, cp.admin_token
        self.local = threading.local()

    def post(self, path: str, body: dict[str, Any]) -> None:
        connection = getattr(self.local, "connection", None)
        if connection is None:
            connection = self.local.connection = http.client.HTTPSConnection(
                LOOPBACK, self.port, context=self.context, timeout=30
            )
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        for attempt in range(5):
            connection.request("POST", path, body=json.dumps(body), headers=headers)
            answer = connection.getresponse()
            text = answer.read()
            if answer.status in (200, 201):
                return
            if answer.status != 429 or attempt == 4:
                raise RuntimeError(f"POST {path}: {answer.status} {text[:300]!r}")
            time.sleep(0.2 * (attempt + 1))  # the apiserver asked us to come back


def measure_operator(count: int, changes: int, timeout: float) -> OperatorFigures:
    from bench.propagation import CRD_DIR, AppliedLog
    from tests.k8s.cluster import ControlPlane
    from tests.k8s.operator.harness import Mesh, eventually

    began = time.monotonic()
    with ControlPlane() as cp, tempfile.TemporaryDirectory(prefix="mailgate-scale-") as workdir:
        cp.install_crds(CRD_DIR)
        namespace, gateway_namespace = f"scale-{uuid.uuid4().hex[:6]}", f"gw-{uuid.uuid4().hex[:6]}"
        cp.create_namespace(namespace)
        cp.create_namespace(gateway_namespace)
        mesh = Mesh(cp, namespace, gateway_namespace, Path(workdir))
        try:
            gateway = mesh.gateway("gw-1", index=1, extra_args=("--log-format", "json"))
            writer = ApiWriter(cp)
            secrets_path, accounts_path = mesh._path("secrets"), mesh._path("smtpaccounts")

            def create(index: int) -> None:
                name = account_name(index)
                writer.post(
                    secrets_path,
                    {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{name}-smtp", "namespace": namespace},
                     "stringData": {"username": f"{name}@{SENDER_DOMAIN}", "password": f"initial-{index}"}},
                )  # fmt: skip
                writer.post(
                    accounts_path,
                    {"apiVersion": "mailgate.dev/v1alpha1", "kind": "SmtpAccount",
                     "metadata": {"name": name, "namespace": namespace}, "spec": account_spec(index)},
                )  # fmt: skip

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(create, range(count)))
            setup_s = time.monotonic() - began
            interval = max(0.1, count / 10_000)  # a status document of N accounts costs the gateway to write
            operator = mesh.operator(resync=60.0)
            started = time.perf_counter()
            deadline = time.monotonic() + timeout

            def served() -> int:
                return len(gateway.status()["accounts"])

            def ready() -> int:
                code, body = cp.request("GET", accounts_path, timeout=60)
                return sum(1 for item in body["items"] if _ready(item)) if code == 200 else 0

            figures = OperatorFigures(setup_s=setup_s)
            figures.served = _wait_count(served, count, deadline, interval, operator.check_alive)
            if figures.served >= count:
                figures.reconcile_s = time.perf_counter() - started
                figures.ready = _wait_count(ready, count, deadline, interval * 2, operator.check_alive)
                if figures.ready >= count:
                    figures.status_s = time.perf_counter() - started
            assert operator.proc is not None
            figures.rss_kb = settled_rss_kb(operator.proc.pid)
            if figures.status_s is None:
                return figures  # out of time: what was done by the deadline is the result
            full_before = operator.metric("mailgate_operator_push_duration_seconds_count", kind="full")
            log = AppliedLog(gateway.log_path)
            for step in range(changes):
                index = (step * 7919) % count
                name = account_name(index)
                log.mark()
                patch: dict[str, Any]
                if step % 2:
                    path, patch = mesh._path("secrets", f"{name}-smtp"), {"stringData": {"password": f"r-{step}"}}
                else:
                    path, patch = mesh._path("smtpaccounts", name), {"spec": {"pool": {"ttlSeconds": 1000 + step}}}
                code, body = cp.request("PATCH", path, patch)
                accepted = time.time()
                assert code == 200, body
                key = f"{namespace}/{name}"
                applied: float = eventually(partial(log.applied_at, key), f"{key} applied", timeout=60)
                figures.changes_s.append(max(0.0, applied - accepted))
            figures.full_pushes = operator.metric("mailgate_operator_push_duration_seconds_count", kind="full") - full_before
            return figures
        finally:
            mesh.close()


def _wait_count(count: Callable[[], int], target: int, deadline: float, interval: float, alive: Callable[[], None]) -> int:
    """Poll ``count`` until it reaches ``target`` or the deadline passes; returns the last count.

    A failed or slow poll is tried again (the gateway and the apiserver are
    busy with the very work being measured); a dead operator fails at once.
    """
    last = 0
    while True:
        alive()
        try:
            last = count()
        except (OSError, AssertionError, ValueError):
            pass
        if last >= target or time.monotonic() >= deadline:
            return last
        time.sleep(interval)


def _ready(item: dict[str, Any]) -> bool:
    conditions = (item.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


# -- the run -----------------------------------------------------------------------------------


def run(count: int, operator_count: int | None, changes: int, send: bool, operator_timeout: float) -> dict[str, Any]:
    began = time.monotonic()
    gateway = measure_gateway(count, changes, send)
    baseline_s, _ = measure_serve(1, timeout=60)
    serve_s, serve_rss = measure_serve(count, timeout=max(60.0, count / 50))
    operator = measure_operator(operator_count, max(changes // 4, 2), operator_timeout) if operator_count else None

    kb_per_account = (gateway.rss_n_kb - gateway.rss_0_kb) / count
    summary: dict[str, Any] = {
        "accounts": count,
        "kb_per_tls_account": round(kb_per_account, 2),
        "snapshot_apply_s": round(gateway.snapshot_apply_s, 3),
        "one_change_apply_ms": round(statistics.median(gateway.changes_ms), 2),
        "serve_ready_s": round(serve_s, 3),
        "operator_accounts": operator_count or 0,
        "operator_rss_mb": round(operator.rss_kb / 1024, 1) if operator else None,
        "operator_reconcile_s": _round(operator.reconcile_s, 2) if operator else None,
        "operator_status_s": _round(operator.status_s, 2) if operator else None,
        "operator_change_s": round(statistics.median(operator.changes_s), 3) if operator and operator.changes_s else None,
        "operator_change_full_pushes": int(operator.full_pushes) if operator and operator.full_pushes is not None else None,
        "operator_timeout_s": operator_timeout if operator else None,
        "operator_served": operator.served if operator else None,  # below operator_accounts: out of time
        "operator_ready": operator.ready if operator else None,
        "gateway_rss_0_mb": round(gateway.rss_0_kb / 1024, 1),
        "gateway_rss_n_mb": round(gateway.rss_n_kb / 1024, 1),
        "unchanged_snapshot_apply_s": round(gateway.unchanged_snapshot_apply_s, 3),
        "one_change_max_ms": round(max(gateway.changes_ms), 2),
        "http_rtt_ms": round(gateway.http_rtt_ms, 2),
        "first_send_ms": None if gateway.first_send_ms is None else round(gateway.first_send_ms, 1),
        "serve_ready_baseline_s": round(baseline_s, 3),
        "serve_rss_mb": round(serve_rss / 1024, 1),
        "targets": {**TARGETS, "accounts": TARGET_ACCOUNTS},
        "total_s": round(time.monotonic() - began, 1),
    }
    rows: list[list[object]] = [
        ["gateway RSS, empty snapshot", summary["gateway_rss_0_mb"], "MB", "-"],
        [f"gateway RSS, {count} STARTTLS accounts", summary["gateway_rss_n_mb"], "MB", "-"],
        ["kb_per_tls_account", summary["kb_per_tls_account"], "KiB", TARGETS["kb_per_tls_account"]],
        [f"snapshot_apply_s ({count} to an empty gateway)", summary["snapshot_apply_s"], "s", TARGETS["snapshot_apply_s"]],
        ["full snapshot, 1 account changed", summary["unchanged_snapshot_apply_s"], "s", "-"],
        [f"one_change_apply_ms (median of {changes})", summary["one_change_apply_ms"], "ms", TARGETS["one_change_apply_ms"]],
        ["one change, max", summary["one_change_max_ms"], "ms", "-"],
        ["HTTP round trip (GET /livez)", summary["http_rtt_ms"], "ms", "-"],
        ["first send, lazy STARTTLS account", summary["first_send_ms"] if send else "skipped", "ms", "-"],
        ["serve_ready_s, 1 account", summary["serve_ready_baseline_s"], "s", "-"],
        [f"serve_ready_s ({count} accounts)", summary["serve_ready_s"], "s", TARGETS["serve_ready_s"]],
        [f"serve RSS ({count} accounts)", summary["serve_rss_mb"], "MB", "-"],
    ]
    if operator is not None and operator.reconcile_s is None:
        rows.append([f"operator: gateway served after {operator_timeout:g} s (out of time)", operator.served, "", operator_count])
    if operator is not None and operator.reconcile_s is not None and operator.status_s is None:
        rows.append(
            [f"operator: SmtpAccounts Ready after {operator_timeout:g} s (out of time)", operator.ready, "", operator_count]
        )
    if operator is not None:
        rows += [
            [f"operator_reconcile_s ({operator_count} accounts, start to served)", summary["operator_reconcile_s"], "s", "-"],
            ["operator start to every SmtpAccount Ready", summary["operator_status_s"], "s", "-"],
            [f"operator_rss_mb ({operator_count} accounts)", summary["operator_rss_mb"], "MB", "-"],
            [f"operator one change to applied (median of {len(operator.changes_s)})", summary["operator_change_s"], "s", "-"],
            ["full snapshots pushed during those changes", summary["operator_change_full_pushes"], "", "0"],
        ]
    print(f"{count} accounts (STARTTLS on 587, AUTH LOGIN, 1 sender, maxConnections 3), {os.cpu_count()} CPUs; "
          f"targets are for {TARGET_ACCOUNTS:,} accounts")  # fmt: skip
    if operator is not None:
        print(f"operator part: {operator_count} SmtpAccounts and Secrets created in {operator.setup_s:.1f} s "
              "(control plane included)")  # fmt: skip
    print(format_table(["measure", "value", "unit", "target"], [[_show(v) for v in row] for row in rows]))
    return summary


def _show(value: object) -> object:
    return "-" if value is None else value


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


# -- profiles ------------------------------------------------------------------------------------


def profile(count: int, top: int) -> None:
    """cProfile of the apply paths in this process, as ``mailgate gateway`` and ``mailgate serve`` run them."""
    import asyncio

    from mailgate.gcpause import collection_paused as paused  # what the admin API wraps a snapshot push in
    from mailgate.pool import SMTPPool
    from mailgate.relay.accounts import AccountRegistry
    from mailgate.snapshot import AccountConfig, ConfigSnapshot
    from mailgate.standalone.loader import load_snapshot

    def report(title: str, profiler: cProfile.Profile, elapsed: float) -> None:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.strip_dirs().sort_stats("cumulative").print_stats(top)
        print(f"== {title}: {elapsed * 1000:.1f} ms (unprofiled) ==")
        print(out.getvalue().split("\n", 6)[-1].rstrip())  # drop pstats' header lines
        print()

    async def gateway_paths() -> None:
        # As Gateway.__init__ builds them (the pool's close grace does not matter here).
        registry = AccountRegistry(SMTPPool(), command_timeout=30.0, local_hostname=None)
        full = snapshot_body(count, revision=1)
        started = time.perf_counter()
        with paused():
            registry.apply_snapshot(ConfigSnapshot.model_validate_json(full))
        elapsed = time.perf_counter() - started
        # Profile on a second registry: the first run also paid for imports and caches.
        registry = AccountRegistry(SMTPPool(), command_timeout=30.0, local_hostname=None)
        profiler = cProfile.Profile()
        profiler.enable()
        with paused():
            registry.apply_snapshot(ConfigSnapshot.model_validate_json(full))
        profiler.disable()
        report(f"full snapshot of {count} accounts: validate ({len(full) >> 10} KiB of JSON) and apply", profiler, elapsed)

        again = snapshot_body(count, revision=2, changed=count // 2)
        started = time.perf_counter()
        with paused():
            registry.apply_snapshot(ConfigSnapshot.model_validate_json(again))
        elapsed = time.perf_counter() - started
        again = snapshot_body(count, revision=3, changed=count // 3)
        profiler = cProfile.Profile()
        profiler.enable()
        with paused():
            registry.apply_snapshot(ConfigSnapshot.model_validate_json(again))
        profiler.disable()
        report(f"full snapshot of {count} accounts, 1 changed, to a gateway holding them", profiler, elapsed)

        bodies = [json.dumps(account_config(i, password=f"p{i}")).encode() for i in range(0, count, max(count // 40, 1))]
        started = time.perf_counter()
        for revision, body in enumerate(bodies[:20], start=10):
            registry.put_account(AccountConfig.model_validate_json(body), revision)
        elapsed = (time.perf_counter() - started) / len(bodies[:20])
        profiler = cProfile.Profile()
        profiler.enable()
        for revision, body in enumerate(bodies[20:], start=100):
            registry.put_account(AccountConfig.model_validate_json(body), revision)
        profiler.disable()
        report(f"one changed account among {count} (x{len(bodies[20:])} in the profile; mean per change)", profiler, elapsed)

    asyncio.run(gateway_paths())

    with tempfile.TemporaryDirectory(prefix="mailgate-scale-") as tmp:
        files = write_yaml(Path(tmp), count)
        started = time.perf_counter()
        load_snapshot(files)
        elapsed = time.perf_counter() - started
        profiler = cProfile.Profile()
        profiler.enable()
        load_snapshot(files)
        profiler.disable()
        size = sum(f.stat().st_size for f in files) >> 10
        report(f"mailgate serve's YAML load of {count} accounts and Secrets ({size} KiB)", profiler, elapsed)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 accounts, 200 for the operator: under 90 s")
    parser.add_argument("--accounts", type=int, help="N (default 10,000; 2,000 with --quick)")
    parser.add_argument("--operator-accounts", type=int, help="M for the operator part (default N; 200 with --quick)")
    parser.add_argument("--no-operator", action="store_true", help="skip the operator part (no control plane)")
    parser.add_argument("--no-send", action="store_true", help="skip the send through a lazily opened account")
    parser.add_argument("--changes", type=int, help="one-account changes to time (default 40; 20 with --quick)")
    parser.add_argument(
        "--operator-timeout", type=float,
        help="seconds the operator gets to serve every account (default 900; 60 with --quick); past it, the "
        "JSON reports how many it served (operator_served) and operator_reconcile_s is null",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command")
    prof = sub.add_parser("profile", help="cProfile the apply paths and the YAML load in this process")
    prof.add_argument("--accounts", type=int, default=10_000, dest="profile_accounts")
    prof.add_argument("--top", type=int, default=15, help="entries per profile, by cumulative time")
    args = parser.parse_args(argv)
    if args.command == "profile":
        profile(args.profile_accounts, args.top)
        return
    count = args.accounts or (2000 if args.quick else TARGET_ACCOUNTS)
    operator_count = None if args.no_operator else (args.operator_accounts or (200 if args.quick else count))
    changes = args.changes or (20 if args.quick else 40)
    started = time.monotonic()
    operator_timeout = args.operator_timeout or (60.0 if args.quick else 900.0)
    summary = run(count, operator_count, changes, send=not args.no_send, operator_timeout=operator_timeout)
    print(f"took {time.monotonic() - started:.1f} s", file=sys.stderr)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
