"""``python -m bench.propagation``: how fast a change in the apiserver reaches every gateway.

A real kube-apiserver and etcd (the test control plane), the operator as a
subprocess, three ``mailgate gateway`` processes on 127.x.y.z registered as
Pods. With N SmtpAccounts (100 in ``--quick`` mode, 1,000 otherwise) served:

- ``change``: the time from the apiserver accepting a change (its PATCH
  answer) to the last of the three gateways serving it, read from their
  ``GET /v1/status`` (one poller thread per gateway). Changes alternate a
  spec edit (``pool.ttlSeconds``, seen as the new generation) and a Secret
  rotation (a new password, seen as a new config digest), each on another
  account, one after the other;
- ``snapshot``: the time from a new gateway Pod getting its IP to that
  gateway answering ``/readyz`` 200, i.e. holding the full N-account snapshot.

Prints a table, then as the LAST line a JSON object with ``accounts``,
``gateways``, ``changes``, ``p50_s``, ``p99_s`` and ``snapshot_s``. The
target is ``p99_s`` < 1.0 with 1,000 accounts. ``--quick`` stays under 45 s.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import format_table, percentile
from tests.k8s.cluster import ControlPlane
from tests.k8s.operator.harness import GATEWAY_LABELS, GatewayProcess, Mesh, eventually

CRD_DIR = Path(__file__).resolve().parents[1] / "crds"
GATEWAYS = 3


class _Upstream:
    """Accounts need a server to point at; nothing is sent in this benchmark."""

    port = 2525


def _create_accounts(mesh: Mesh, count: int) -> list[str]:
    names = [f"acct-{index:04d}" for index in range(count)]

    def create(name: str) -> None:
        mesh.secret(f"{name}-smtp", {"username": name, "password": "initial"})
        mesh.apply_account(name, _Upstream, pool={"maxConnections": 3})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, names))
    return names


def _served_everywhere(gateways: Sequence[GatewayProcess], key: str, check: Callable[[str, dict[str, Any]], bool]) -> float:
    """perf_counter() at which the last gateway served ``key`` as ``check`` wants (one poller per gateway)."""

    def poll(gateway: GatewayProcess) -> float:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            report = gateway.account(key)
            if report is not None and check(gateway.name, report):
                return time.perf_counter()
        raise TimeoutError(f"{gateway.name} never served the change of {key}")

    with ThreadPoolExecutor(len(gateways)) as pool:
        return max(pool.map(poll, gateways))


def _change(mesh: Mesh, gateways: Sequence[GatewayProcess], name: str, index: int) -> tuple[str, float]:
    key = f"{mesh.namespace}/{name}"
    if index % 2 == 0:
        code, body = mesh.cp.request(
            "PATCH", mesh._path("smtpaccounts", name), {"spec": {"pool": {"ttlSeconds": 1000 + index}}}
        )
        accepted = time.perf_counter()
        assert code == 200, body
        generation = body["metadata"]["generation"]
        done = _served_everywhere(gateways, key, lambda _, report: report["generation"] == generation)
        return "spec edit", done - accepted
    before = {gateway.name: (gateway.account(key) or {})["digest"] for gateway in gateways}
    code, body = mesh.cp.request(
        "PATCH", mesh._path("secrets", f"{name}-smtp"), {"stringData": {"password": f"rotated-{index}"}}
    )
    accepted = time.perf_counter()
    assert code == 200, body
    done = _served_everywhere(gateways, key, lambda gateway, report: report["digest"] != before[gateway])
    return "secret rotation", done - accepted


def _fresh_gateway_snapshot(mesh: Mesh, count: int) -> float:
    """From the new Pod's status (IP, Running) being accepted to the gateway being ready with every account."""
    name = "gw-fresh"
    gateway = GatewayProcess(
        name, f"{mesh._net}.{GATEWAYS + 1}", mesh.send_port, mesh.admin_port, mesh.token, mesh.token_file,
        mesh.workdir / f"{name}.log",
    ).start()  # fmt: skip
    mesh.gateways[name] = gateway
    mesh.cp.wait_for_service_account(mesh.gateway_namespace)
    pods = f"/api/v1/namespaces/{mesh.gateway_namespace}/pods"
    code, body = mesh.cp.request(
        "POST", pods, {"metadata": {"name": name, "labels": GATEWAY_LABELS},
                       "spec": {"containers": [{"name": "main", "image": "mailgate:bench"}]}},
    )  # fmt: skip
    assert code == 201, body
    status = {"phase": "Running", "podIP": gateway.ip, "podIPs": [{"ip": gateway.ip}], "conditions": []}
    started = time.perf_counter()
    code, body = mesh.cp.request("PATCH", f"{pods}/{name}/status", {"status": status})
    assert code == 200, body
    eventually(gateway.ready, "the fresh gateway to turn ready", timeout=120)
    elapsed = time.perf_counter() - started
    served = len(gateway.status()["accounts"])
    assert served == count, f"the fresh gateway serves {served} of {count} accounts"
    return elapsed


def run(accounts: int, changes: int) -> dict[str, Any]:
    began = time.monotonic()
    with ControlPlane() as cp, tempfile.TemporaryDirectory(prefix="mailgate-bench-") as workdir:
        cp.install_crds(CRD_DIR)
        namespace, gateway_namespace = f"bench-{uuid.uuid4().hex[:6]}", f"gw-{uuid.uuid4().hex[:6]}"
        cp.create_namespace(namespace)
        cp.create_namespace(gateway_namespace)
        mesh = Mesh(cp, namespace, gateway_namespace, Path(workdir))
        try:
            with ThreadPoolExecutor(GATEWAYS) as pool:
                gateways = list(pool.map(lambda i: mesh.gateway(f"gw-{i}", index=i), range(1, GATEWAYS + 1)))
            mesh.operator(resync=30.0)
            names = _create_accounts(mesh, accounts)
            eventually(
                lambda: all(len(g.status()["accounts"]) == accounts for g in gateways),
                f"{accounts} accounts on every gateway",
                timeout=600,
            )
            setup_s = time.monotonic() - began
            samples = [_change(mesh, gateways, names[index % len(names)], index) for index in range(changes)]
            snapshot_s = _fresh_gateway_snapshot(mesh, accounts)
        finally:
            mesh.close()
    latencies = [seconds for _, seconds in samples]
    by_kind = {kind: [s for k, s in samples if k == kind] for kind in ("spec edit", "secret rotation")}
    rows: list[list[object]] = [
        [kind, len(values), percentile(values, 50) * 1000, percentile(values, 99) * 1000, max(values) * 1000]
        for kind, values in (*by_kind.items(), ("all changes", latencies))
    ]
    print(f"{accounts} accounts, {GATEWAYS} gateways, {changes} changes one after another (setup {setup_s:.1f} s)")
    print(format_table(["change", "n", "p50 ms", "p99 ms", "max ms"], rows))
    print(f"fresh gateway, {accounts}-account snapshot: {snapshot_s * 1000:.0f} ms to ready")
    return {
        "accounts": accounts,
        "gateways": GATEWAYS,
        "changes": changes,
        "p50_s": round(percentile(latencies, 50), 4),
        "p99_s": round(percentile(latencies, 99), 4),
        "spec_p99_s": round(percentile(by_kind["spec edit"], 99), 4),
        "secret_p99_s": round(percentile(by_kind["secret rotation"], 99), 4),
        "snapshot_s": round(snapshot_s, 4),
        "snapshot_accounts": accounts,
        "total_s": round(time.monotonic() - began, 1),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.propagation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 accounts, 50 changes: well under 45 s")
    parser.add_argument("--accounts", type=int, help="SmtpAccounts to create (default 100 quick, 1000 full)")
    parser.add_argument("--changes", type=int, default=50, help="changes to time (at least 50)")
    args = parser.parse_args(argv)
    accounts = args.accounts or (100 if args.quick else 1000)
    print(json.dumps(run(accounts, max(args.changes, 2))))


if __name__ == "__main__":
    main()
