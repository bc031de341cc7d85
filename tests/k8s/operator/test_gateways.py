"""Gateway pods come and go: shares follow, their sum never exceeds the limit, restarted pods get a snapshot."""

from __future__ import annotations

import threading
import time
from typing import Any

from tests.k8s.operator.harness import GatewayProcess, Mesh, eventually


def _share(report: dict[str, Any] | None) -> tuple[int, int]:
    """(connections, messages per minute) a gateway serves an account with; a forwarding one has no pool."""
    if report is None:
        return 0, 0
    connections = report["pool"]["maxConnections"] if report["pool"] else 0
    return connections, report["rateLimit"]["messagesPerMinute"] or 0


class ShareSampler:
    """Reads every gateway's status in a loop and keeps the consistent snapshots.

    Two reads of one gateway are far apart in time, so a plain pass could
    pair one gateway's state before a change with another's after it. A pass
    counts only if a second pass right after it finds every revision
    unchanged: then every state of the first pass held at one instant.
    """

    def __init__(self, gateways: dict[str, GatewayProcess], key: str) -> None:
        self.gateways = gateways
        self.key = key
        self.snapshots: list[dict[str, tuple[int, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _pass(self) -> dict[str, tuple[int, tuple[int, int]]]:
        result = {}
        for name, gateway in list(self.gateways.items()):
            try:
                status = gateway.status()
            except (OSError, AssertionError):  # stopped meanwhile: it serves nothing
                continue
            result[name] = (status["revision"], _share(status["accounts"].get(self.key)))
        return result

    def _run(self) -> None:
        deadline = time.monotonic() + 60
        previous = self._pass()
        while not self._stop.wait(0.01) and time.monotonic() < deadline:  # pacing, not synchronisation
            current = self._pass()
            if current and current == previous:
                self.snapshots.append({name: share for name, (_, share) in current.items()})
            previous = current

    def __enter__(self) -> ShareSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_adding_and_removing_gateways_recomputes_shares_within_the_limit(mesh: Mesh, upstream_factory) -> None:
    upstream = upstream_factory(users={"app": "pw"})
    mesh.gateway("gw-1", index=1)
    mesh.gateway("gw-2", index=2)
    mesh.operator()
    mesh.secret("split-smtp", {"username": "app", "password": "pw"})
    mesh.apply_account("split", upstream, pool={"maxConnections": 3}, rateLimit={"messagesPerMinute": 30})
    key = f"{mesh.namespace}/split"
    mesh.wait_condition("split", "Synced", "True")

    def shares() -> dict[str, tuple[int, int]]:
        return {name: _share(gateway.account(key)) for name, gateway in mesh.gateways.items()}

    assert shares() == {"gw-1": (2, 15), "gw-2": (1, 15)}
    with ShareSampler(mesh.gateways, key) as sampler:
        mesh.gateway("gw-3", index=3, ready=False)  # a new pod: a snapshot first, a share once ready
        eventually(lambda: mesh.gateways["gw-3"].ready(), "gw-3 to receive its snapshot")
        assert shares()["gw-3"] == (0, 0)  # unready pods forward
        mesh.set_ready("gw-3", True)
        eventually(lambda: shares() == {"gw-1": (1, 10), "gw-2": (1, 10), "gw-3": (1, 10)}, "shares [1, 1, 1]")
        mesh.remove_gateway("gw-1")
        eventually(lambda: shares() == {"gw-2": (2, 15), "gw-3": (1, 15)}, "shares [2, 1] after gw-1 left")
    assert sampler.snapshots, "no consistent snapshot was observed"
    for snapshot in sampler.snapshots:
        assert sum(c for c, _ in snapshot.values()) <= 3, snapshot
        assert sum(r for _, r in snapshot.values()) <= 30, snapshot
    status = (mesh.account("split") or {})["status"]
    eventually(
        lambda: ((mesh.account("split") or {})["status"]["effective"]["maxConnectionsPerGateway"] == [2, 1]),
        "status.effective to follow",
    )
    assert status["gateways"]["total"] in (2, 3)
    for gateway in mesh.gateways.values():
        code, body = gateway.send(key)
        assert code == 200, body


def test_a_restarted_gateway_gets_the_snapshot_and_turns_ready(mesh: Mesh, upstream_factory) -> None:
    upstream = upstream_factory(users={"app": "pw"})
    mesh.gateway("gw-1", index=1)
    gateway = mesh.gateway("gw-2", index=2)
    mesh.operator()
    mesh.secret("phoenix-smtp", {"username": "app", "password": "pw"})
    mesh.apply_account("phoenix", upstream, pool={"maxConnections": 2})
    key = f"{mesh.namespace}/phoenix"
    mesh.wait_condition("phoenix", "Ready", "True")

    gateway.kill()  # a crash; the kubelet notices and marks the pod unready, then restarts the container
    mesh.set_ready("gw-2", False)
    gateway.start()
    eventually(gateway.ready, "the restarted gateway to get its snapshot", timeout=30)
    assert gateway.account(key) is not None
    mesh.set_ready("gw-2", True)
    mesh.wait_condition("phoenix", "Synced", "True")
    eventually(lambda: _share(gateway.account(key)) == (1, 0), "its share back")
    code, body = gateway.send(key)
    assert code == 200, body
    upstream.wait_messages(1)


def test_a_crashed_gateway_is_repaired_by_the_resync_alone(mesh: Mesh, upstream_factory) -> None:
    """No readiness flip this time: the periodic status read notices the empty gateway."""
    upstream = upstream_factory(users={"app": "pw"})
    gateway = mesh.gateway("gw-1", index=1)
    operator = mesh.operator(resync=1.0)
    mesh.secret("drift-smtp", {"username": "app", "password": "pw"})
    mesh.apply_account("drift", upstream)
    key = f"{mesh.namespace}/drift"
    mesh.wait_condition("drift", "Ready", "True")
    gateway.kill()
    gateway.start()
    eventually(lambda: gateway.account(key) is not None, "the resync to restore the account", timeout=30)
    assert gateway.ready()
    assert operator.metric("mailgate_operator_push_duration_seconds_count", kind="full") >= 2
