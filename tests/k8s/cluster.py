"""A real Kubernetes control plane for tests: etcd, kube-apiserver, kube-controller-manager.

Why not a mock: the operator and the gateway talk to the Kubernetes API
(CRDs with schema validation, status subresources, TokenReview, RBAC, watches);
only the real apiserver proves those calls right. The binaries are built from
the Go module proxy by ``hack/k8s-binaries.sh`` and cached outside the repo.

There is no scheduler and no kubelet. Tests that need "pods" create Pod
objects and set their status themselves (``register_pod``), as a kubelet would.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import IO, Any, TypeVar

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

K8S_VERSION = "v1.37.2"
ETCD_VERSION = "v3.6.16"
HELM_VERSION = "v4.3.1"

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "k8s-binaries.sh"

KUBE_BINARIES = ("kube-apiserver", "kubectl", "kube-controller-manager")
ALL_BINARIES = (*KUBE_BINARIES, "etcd", "helm")
SA_ISSUER = "https://kubernetes.default.svc"
API_AUDIENCES = (SA_ISSUER, "mailgate")
CONTROLLERS = "namespace,garbagecollector,serviceaccount,serviceaccount-token"

T = TypeVar("T")
Manifest = str | Mapping[str, Any] | Sequence[Mapping[str, Any]]


class ControlPlaneError(RuntimeError):
    """The control plane could not start or stopped answering."""


class KubectlError(RuntimeError):
    """A kubectl call failed; carries its exit code and stderr for the test report."""

    def __init__(self, args: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        super().__init__(f"kubectl {' '.join(args)} failed (exit {returncode}): {stderr.strip()}")
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


# --------------------------------------------------------------------------- binaries


@dataclass(frozen=True)
class BinDirs:
    """Directories holding the Kubernetes binaries, etcd and helm (may all be one dir)."""

    kube: Path
    etcd: Path
    helm: Path

    def path(self, name: str) -> Path:
        """Full path of one binary by its file name."""
        if name == "etcd":
            return self.etcd / name
        if name == "helm":
            return self.helm / name
        return self.kube / name

    def missing(self) -> list[str]:
        """Names of binaries that are not there (or not executable)."""
        return [n for n in ALL_BINARIES if not os.access(self.path(n), os.X_OK)]


def cache_root() -> Path:
    """Where hack/k8s-binaries.sh caches its builds (kept in sync with the script)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mailgate"


def default_bin_dirs() -> BinDirs:
    """The cache directories the build script writes to."""
    root = cache_root()
    return BinDirs(
        kube=root / f"kubernetes-{K8S_VERSION}",
        etcd=root / f"etcd-{ETCD_VERSION}",
        helm=root / f"helm-{HELM_VERSION}",
    )


def locate_binaries(*, build: bool = True) -> BinDirs:
    """Find the binaries, building them if missing.

    An explicit ``MAILGATE_K8S_BIN`` must be complete (a typo should fail, not
    start a 13-minute build); ``KUBEBUILDER_ASSETS`` is used only when complete,
    since envtest's usual set lacks helm and kube-controller-manager. Never
    skips: if the build fails, the test run fails loudly.
    """
    explicit = os.environ.get("MAILGATE_K8S_BIN")
    if explicit:
        dirs = BinDirs(Path(explicit), Path(explicit), Path(explicit))
        if missing := dirs.missing():
            raise ControlPlaneError(f"MAILGATE_K8S_BIN={explicit} lacks {', '.join(missing)}")
        return dirs
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and not BinDirs(Path(assets), Path(assets), Path(assets)).missing():
        return BinDirs(Path(assets), Path(assets), Path(assets))
    dirs = default_bin_dirs()
    if dirs.missing() and build:
        subprocess.run(["bash", str(BUILD_SCRIPT)], check=True)
    if missing := dirs.missing():
        raise ControlPlaneError(f"binaries missing after build: {', '.join(missing)}")
    return dirs


# --------------------------------------------------------------------------- helpers


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports, held open together so they cannot collide."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for(check: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except ControlPlaneError:
            raise
        except Exception as exc:  # remembered for the timeout message
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


def tail(path: Path, lines: int = 40) -> str:
    """Last lines of a log file, for error messages that explain a failed start."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


def _die_with_parent() -> None:
    """Runs in the child before exec: get SIGKILL when the test process dies.

    Why: a crashed or SIGKILLed pytest must not leave etcd/apiserver running.
    Linux sends it when the *thread* that started the child exits, so start
    the control plane from a long-lived thread (pytest's main thread is).
    """
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _manifest_text(manifest: Manifest) -> str:
    """YAML text, one object, or a list of objects -> text kubectl accepts on stdin."""
    if isinstance(manifest, str):
        return manifest
    if isinstance(manifest, Mapping):
        return json.dumps(manifest)
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": list(manifest)})


def _generate_sa_key(key_path: Path, pub_path: Path) -> None:
    """RSA key pair that signs (apiserver, controller-manager) and verifies SA tokens."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    pub_path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


@dataclass
class _Process:
    """One started server with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    def check_alive(self) -> None:
        """Raise with the log tail if the process has exited."""
        code = self.popen.poll()
        if code is not None:
            raise ControlPlaneError(
                f"{self.name} exited with code {code}; last log lines ({self.log_path}):\n{tail(self.log_path)}"
            )

    def stop(self, timeout: float) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; always reaps the process."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log_file.close()


# --------------------------------------------------------------------------- control plane


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager on loopback, in a temp dir.

    Use as a context manager or call ``start()``/``stop()``. The admin identity
    is a static token in group ``system:masters``; authorization is RBAC so
    ``kubectl auth can-i --as=...`` answers as in a real cluster.
    """

    def __init__(
        self,
        bin_dirs: BinDirs | None = None,
        *,
        startup_timeout: float = 90.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.bin_dirs = bin_dirs or locate_binaries()
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.admin_token = secrets.token_hex(24)
        self.startup_seconds: float | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._procs: list[_Process] = []
        self._ssl: ssl.SSLContext | None = None
        self._ca_file: Path | None = None
        self._etcd_port = self._api_port = 0

    # -- paths and addresses

    @property
    def bin_dir(self) -> BinDirs:
        """Where the binaries are (kube, etcd and helm directories)."""
        return self.bin_dirs

    @property
    def workdir(self) -> Path:
        """The temp dir holding keys, kubeconfig, etcd data and logs."""
        if self._tmp is None:
            raise ControlPlaneError("control plane is not started")
        return Path(self._tmp.name)

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig for kubectl, helm, kopf and kubernetes_asyncio."""
        return self.workdir / "kubeconfig"

    @property
    def server(self) -> str:
        """The apiserver URL (https on 127.0.0.1)."""
        return f"https://127.0.0.1:{self._api_port}"

    @property
    def etcd_url(self) -> str:
        """The etcd client URL."""
        return f"http://127.0.0.1:{self._etcd_port}"

    @property
    def ca_file(self) -> Path | None:
        """CA bundle of the apiserver's self-signed cert, or None if TLS is not verified."""
        return self._ca_file

    @property
    def log_dir(self) -> Path:
        """One log file per server process."""
        return self.workdir / "logs"

    @property
    def pids(self) -> list[int]:
        """PIDs of the running server processes (to prove none is left behind)."""
        return [p.popen.pid for p in self._procs]

    # -- lifecycle

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> ControlPlane:
        """Start all three servers and wait until the API is ready and controllers run."""
        if self._tmp is not None:
            raise ControlPlaneError("control plane already started")
        began = time.monotonic()
        self._tmp = tempfile.TemporaryDirectory(prefix="mailgate-k8s-")
        atexit.register(self.stop)
        try:
            self._prepare_files()
            self._start_etcd()
            self._start_apiserver()
            self._write_kubeconfig()
            self._start_controller_manager()
            self._wait_controllers()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Stop every process (newest first) and remove the temp dir. Idempotent."""
        for proc in reversed(self._procs):
            proc.stop(self.stop_timeout)
        self._procs.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        atexit.unregister(self.stop)

    def restart_apiserver(self, grace: float = 2.0) -> float:
        """Stop kube-apiserver and start it again with the same argv; returns the seconds it was away.

        Why: "the apiserver restarted" is the realistic control-plane fault (an
        upgrade, an OOM kill). Same etcd, port, flags and cert dir (the serving
        cert is reused), so clients reconnect to the same URL and trust the same
        CA, and the session's other tests see an unchanged cluster afterwards.
        The old log moves to ``kube-apiserver.<n>.log``. Waits for /readyz.
        SIGTERM first, SIGKILL after ``grace`` seconds: with watches open the
        apiserver drains for far longer than a test should wait (a kubelet too
        ends a slow shutdown with SIGKILL).
        """
        began = time.monotonic()
        with self.apiserver_stopped(grace):
            pass
        return time.monotonic() - began

    @contextlib.contextmanager
    def apiserver_stopped(self, grace: float = 2.0) -> Iterator[None]:
        """kube-apiserver is gone inside the block and back (same argv, ready) after it: ``restart_apiserver`` with a pause.

        Why: a test must act while the apiserver is away (send with a token no
        gateway has reviewed yet) and see what the processes that depend on it do.
        """
        index, old = next((i, p) for i, p in enumerate(self._procs) if p.name == "kube-apiserver")
        old.stop(grace)
        restarts = len(list(self.log_dir.glob("kube-apiserver.*.log")))
        old.log_path.rename(self.log_dir / f"kube-apiserver.{restarts + 1}.log")
        self._procs.remove(old)
        try:
            yield
        finally:
            proc = self._spawn("kube-apiserver", [str(arg) for arg in old.popen.args[1:]])  # type: ignore[index]  # a list: see _spawn
            self._procs.remove(proc)
            self._procs.insert(index, proc)  # keep the stop order: controller-manager before apiserver before etcd
            self._wait(proc, self._apiserver_ready, "kube-apiserver /readyz after a restart")

    def _prepare_files(self) -> None:
        self.log_dir.mkdir()
        _generate_sa_key(self.workdir / "sa.key", self.workdir / "sa.pub")
        (self.workdir / "tokens.csv").write_text(f'{self.admin_token},admin,admin,"system:masters"\n')

    def _spawn(self, name: str, args: list[str]) -> _Process:
        log_path = self.log_dir / f"{name}.log"
        log_file = log_path.open("wb")
        popen = subprocess.Popen(
            [str(self.bin_dirs.path(name)), *args],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            preexec_fn=_die_with_parent,  # only prctl, no locks taken
        )
        proc = _Process(name, popen, log_path, log_file)
        self._procs.append(proc)
        return proc

    def _start_etcd(self) -> None:
        client, peer = free_ports(2)
        self._etcd_port = client
        peer_url = f"http://127.0.0.1:{peer}"
        proc = self._spawn(
            "etcd",
            [
                "--name=test",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=test={peer_url}",
                "--unsafe-no-fsync",  # throwaway data: fsync only slows tests down
            ],
        )
        self._wait(proc, self._etcd_healthy, "etcd /health")

    def _etcd_healthy(self) -> bool:
        with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as resp:
            return json.load(resp).get("health") == "true"

    def _start_apiserver(self) -> None:
        (self._api_port,) = free_ports(1)
        w = self.workdir
        proc = self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={self.etcd_url}",
                f"--cert-dir={w / 'certs'}",
                f"--secure-port={self._api_port}",
                "--bind-address=127.0.0.1",
                # Loopback advertise address keeps everything on 127.0.0.1 and
                # puts 127.0.0.1 into the self-signed cert, so TLS can be verified.
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--authorization-mode=RBAC",
                f"--token-auth-file={w / 'tokens.csv'}",
                f"--service-account-issuer={SA_ISSUER}",
                f"--api-audiences={','.join(API_AUDIENCES)}",
                f"--service-account-key-file={w / 'sa.pub'}",
                f"--service-account-signing-key-file={w / 'sa.key'}",
                "--profiling=false",
            ],
        )
        self._wait(proc, self._apiserver_ready, "kube-apiserver /readyz")

    def _apiserver_ready(self) -> bool:
        if self._ssl is None:
            self._ssl = self._make_ssl_context()
        status, _ = self.request("GET", "/readyz", timeout=3)
        return status == 200

    def _make_ssl_context(self) -> ssl.SSLContext:
        """Trust the apiserver's own generated CA; fall back to no verification.

        The cert file (serving cert + its CA) is written before the port opens,
        so it is complete once a connection is possible.
        """
        ca = self.workdir / "certs" / "apiserver.crt"
        if not ca.exists():
            raise FileNotFoundError(ca)
        ctx = ssl.create_default_context(cafile=str(ca))
        try:
            with (
                socket.create_connection(("127.0.0.1", self._api_port), timeout=3) as raw,
                ctx.wrap_socket(raw, server_hostname="127.0.0.1"),
            ):
                pass
        except ssl.SSLCertVerificationError:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            self._ca_file = None
            return ctx
        self._ca_file = ca
        return ctx

    def _write_kubeconfig(self) -> None:
        self.write_kubeconfig(self.kubeconfig, "admin", self.admin_token)

    def write_kubeconfig(self, path: Path, user: str, token: str) -> Path:
        """A kubeconfig for this cluster that authenticates with ``token`` (admin, or a ServiceAccount's)."""
        cluster: dict[str, Any] = {"server": self.server}
        if self._ca_file is not None:
            cluster["certificate-authority"] = str(self._ca_file)
        else:
            cluster["insecure-skip-tls-verify"] = True
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": cluster}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": user}}],
            "current-context": "test",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def service_account_kubeconfig(self, namespace: str, name: str, path: Path, *, duration: str = "1h") -> Path:
        """What a pod's mounted token gives: a kubeconfig acting as ServiceAccount ``namespace/name``."""
        return self.write_kubeconfig(path, name, self.token(namespace, name, audience=SA_ISSUER, duration=duration))

    def token_reviewer_kubeconfig(self, namespace: str, name: str, path: Path) -> Path:
        """A kubeconfig of ServiceAccount ``namespace/name`` allowed to create TokenReviews, as the chart's gateway is.

        The ClusterRoleBinding is named after the namespace; ``delete_token_reviewer`` removes it.
        """
        self.create_service_account(namespace, name)
        self.apply(
            [
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRole",
                    "metadata": {"name": "test-tokenreviewer"},
                    "rules": [{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}],
                },
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRoleBinding",
                    "metadata": {"name": f"test-tokenreviewer-{namespace}"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "test-tokenreviewer"},
                    "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
                },
            ]
        )
        return self.service_account_kubeconfig(namespace, name, path)

    def delete_token_reviewer(self, namespace: str) -> None:
        """Remove the binding ``token_reviewer_kubeconfig`` made (cluster-scoped: deleting the namespace leaves it)."""
        self.kubectl("delete", "clusterrolebinding", f"test-tokenreviewer-{namespace}", "--ignore-not-found", "--wait=false")

    def _start_controller_manager(self) -> None:
        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={self.kubeconfig}",
                f"--service-account-private-key-file={self.workdir / 'sa.key'}",
                f"--controllers={CONTROLLERS}",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--leader-elect=false",
                *([f"--root-ca-file={self._ca_file}"] if self._ca_file else []),
            ],
        )

    def _wait_controllers(self) -> None:
        """The default ServiceAccount appears once the controller-manager works."""
        self.wait_for_service_account("default", "default", timeout=self.startup_timeout)

    def _wait(self, proc: _Process, check: Callable[[], bool], what: str) -> None:
        def probe() -> bool:
            proc.check_alive()
            return check()

        try:
            wait_for(probe, timeout=self.startup_timeout, what=what, interval=0.1)
        except TimeoutError as exc:
            raise ControlPlaneError(f"{exc}; last log lines of {proc.name} ({proc.log_path}):\n{tail(proc.log_path)}") from None

    def _check_processes(self) -> None:
        for proc in self._procs:
            proc.check_alive()

    # -- raw API access

    def request(self, method: str, path: str, body: Any = None, *, timeout: float = 10) -> tuple[int, Any]:
        """An HTTP call to the apiserver as admin: (status, parsed JSON or text).

        Why next to kubectl: some checks need the status code itself (e.g. the
        429 right after a CRD becomes Established).
        """
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.server}{path}", data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.admin_token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            content_type = "application/merge-patch+json" if method == "PATCH" else "application/json"
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self._ssl) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            with err:  # an unclosed HTTPError leaks its socket (ResourceWarning)
                status, raw = err.code, err.read()
        text = raw.decode(errors="replace")
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    # -- kubectl

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this cluster as admin."""
        env = {**os.environ, "KUBECACHEDIR": str(self.workdir / "kube-cache")}
        env.pop("KUBECONFIG", None)
        argv = [str(self.bin_dirs.path("kubectl")), f"--kubeconfig={self.kubeconfig}", *args]
        result = subprocess.run(argv, input=input, capture_output=True, text=True, env=env, timeout=timeout)
        if check and result.returncode != 0:
            self._check_processes()
            raise KubectlError(args, result.returncode, result.stdout, result.stderr)
        return result

    def kubectl_json(self, *args: str, input: str | None = None) -> Any:
        """kubectl with ``-o json``, parsed."""
        return json.loads(self.kubectl(*args, "-o", "json", input=input).stdout)

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """One object as a dict, or None if it does not exist."""
        ns = ["-n", namespace] if namespace else []
        result = self.kubectl("get", kind, name, *ns, "-o", "json", "--ignore-not-found")
        return json.loads(result.stdout) if result.stdout.strip() else None

    def apply(self, manifest: Manifest) -> Any:
        """``kubectl apply`` YAML text, one object or a list of objects; returns the result."""
        return self.kubectl_json("apply", "-f", "-", input=_manifest_text(manifest))

    def create(self, manifest: Manifest) -> Any:
        """``kubectl create`` (for kinds like TokenReview that cannot be applied)."""
        return self.kubectl_json("create", "-f", "-", input=_manifest_text(manifest))

    # -- namespaces, secrets, service accounts, tokens

    def create_namespace(self, name: str) -> dict[str, Any]:
        """A new namespace (its default ServiceAccount follows within seconds)."""
        return self.kubectl_json("create", "namespace", name)

    def delete_namespace(self, name: str, *, wait: bool = False) -> None:
        """Delete a namespace; the namespace controller removes it in about 5 s."""
        self.kubectl("delete", "namespace", name, "--ignore-not-found", f"--wait={str(wait).lower()}")

    def create_secret(self, namespace: str, name: str, data: Mapping[str, str]) -> dict[str, Any]:
        """An Opaque Secret from plain strings (applied, so calling again updates it)."""
        return self.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name, "namespace": namespace},
                "type": "Opaque",
                "stringData": dict(data),
            }
        )

    def create_service_account(self, namespace: str, name: str) -> dict[str, Any]:
        """A ServiceAccount with no permissions (RBAC grants nothing by default)."""
        return self.kubectl_json("create", "serviceaccount", name, "-n", namespace)

    def wait_for_service_account(self, namespace: str, name: str = "default", *, timeout: float = 30) -> dict[str, Any]:
        """Wait until a ServiceAccount exists (e.g. ``default``, made by the controller)."""

        def exists() -> dict[str, Any] | None:
            self._check_processes()
            status, body = self.request("GET", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}")
            return body if status == 200 else None

        return wait_for(exists, timeout=timeout, what=f"serviceaccount {namespace}/{name}")

    def token(self, namespace: str, service_account: str, audience: str = "mailgate", duration: str = "10m") -> str:
        """A bound ServiceAccount token via the TokenRequest API."""
        result = self.kubectl(
            "create", "token", service_account, "-n", namespace,
            f"--audience={audience}", f"--duration={duration}",
        )  # fmt: skip
        return result.stdout.strip()

    def token_review(self, token: str, audiences: Iterable[str] = ("mailgate",)) -> dict[str, Any]:
        """The apiserver's verdict on a token: TokenReview ``status``."""
        review = self.create(
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "spec": {"token": token, "audiences": list(audiences)},
            }
        )
        return review.get("status", {})

    # -- pods (no kubelet: the test plays kubelet)

    def register_pod(
        self,
        namespace: str,
        name: str,
        ip: str,
        labels: Mapping[str, str],
        ready: bool = True,
        *,
        image: str = "mailgate:test",
    ) -> dict[str, Any]:
        """A Running Pod object with ``ip``, Ready or not, as a kubelet would report it.

        Why: gateway discovery lists pods by label and reads podIP and the Ready
        condition; tests run the gateway as a local process on that IP.
        """
        # The ServiceAccount admission plugin rejects pods until the namespace
        # has its default ServiceAccount; a fresh namespace may not yet.
        self.wait_for_service_account(namespace, "default")
        self.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
                "spec": {
                    "automountServiceAccountToken": False,
                    "containers": [{"name": "main", "image": image}],
                },
            }
        )
        status = {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": _now(),
            "conditions": self._conditions(ready),
            "containerStatuses": [self._container_status(image, ready)],
        }
        return self._patch_status(namespace, name, status)

    def set_pod_ready(self, namespace: str, name: str, ready: bool) -> dict[str, Any]:
        """Flip the Ready condition, as a kubelet does when a readiness probe changes."""
        pod = self.get("pod", name, namespace)
        if pod is None:
            raise ControlPlaneError(f"pod {namespace}/{name} does not exist")
        image = pod["spec"]["containers"][0]["image"]
        status = {
            "conditions": self._conditions(ready),
            "containerStatuses": [self._container_status(image, ready)],
        }
        return self._patch_status(namespace, name, status)

    def delete_pod(self, namespace: str, name: str) -> None:
        """Delete a pod; unscheduled pods go at once (no kubelet to wait for)."""
        self.kubectl("delete", "pod", name, "-n", namespace, "--ignore-not-found", "--wait=false")

    def _patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        return self.kubectl_json(
            "patch", "pod", name, "-n", namespace, "--subresource=status",
            "--type=merge", "-p", json.dumps({"status": status}),
        )  # fmt: skip

    @staticmethod
    def _conditions(ready: bool) -> list[dict[str, str]]:
        now = _now()
        value = "True" if ready else "False"
        return [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": value, "lastTransitionTime": now},
            {"type": "Ready", "status": value, "lastTransitionTime": now},
        ]

    @staticmethod
    def _container_status(image: str, ready: bool) -> dict[str, Any]:
        return {
            "name": "main",
            "image": image,
            "imageID": "",
            "ready": ready,
            "started": True,
            "restartCount": 0,
            "state": {"running": {"startedAt": _now()}},
        }

    # -- CRDs

    def install_crds(self, path: str | os.PathLike[str], *, timeout: float = 60) -> list[str]:
        """Apply every YAML file in ``path`` and wait until each CRD really serves.

        Established is not enough: right after it the apiserver can answer
        ``429 storage is (re)initializing`` for about a second, so this also
        waits until listing each served version answers 200. Returns CRD names.
        """
        files = sorted(p for p in Path(path).iterdir() if p.suffix in (".yaml", ".yml"))
        crds: list[dict[str, Any]] = []
        for file in files:
            docs = [d for d in yaml.safe_load_all(file.read_text()) if d]
            crds += [d for d in docs if d.get("kind") == "CustomResourceDefinition"]
            self.kubectl("apply", "-f", str(file))
        names = [crd["metadata"]["name"] for crd in crds]
        if names:
            self.kubectl(
                "wait", "--for=condition=Established", f"--timeout={int(timeout)}s",
                *(f"crd/{n}" for n in names),
            )  # fmt: skip
        for crd in crds:
            self._wait_crd_serving(crd, timeout)
        return names

    def _wait_crd_serving(self, crd: Mapping[str, Any], timeout: float) -> None:
        spec = crd["spec"]
        for version in spec["versions"]:
            if not version.get("served", True):
                continue
            path = f"/apis/{spec['group']}/{version['name']}/{spec['names']['plural']}"
            wait_for(partial(self._answers_200, path), timeout=timeout, what=f"GET {path} to answer 200")

    def _answers_200(self, path: str) -> bool:
        return self.request("GET", path)[0] == 200
