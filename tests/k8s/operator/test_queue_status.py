"""Queued-message counts in SmtpAccount status: a queue-mode account whose upstream is down shows its deferred
message, and zeros once the upstream is fixed; an account that never queues never gets the block.

A real gateway with a SQLite queue (retrying every second), the real operator (resync 2 s, so counts change in
status at most every 4 s) and the real apiserver. The gateway counts its queue every 15 s: each step waits up to
about that long.
"""

from __future__ import annotations

from typing import Any

from tests.k8s.cluster import free_ports
from tests.k8s.operator.harness import Mesh, eventually

COUNTED = 45.0  # the gateway's 15 s count, the operator's 2 s read, the 4 s throttle, with room


def delivery(mesh: Mesh, name: str) -> dict[str, Any] | None:
    status = (mesh.account(name) or {}).get("status") or {}
    block: dict[str, Any] | None = status.get("delivery")
    return block


def test_a_deferred_message_shows_in_the_status_until_it_is_delivered(mesh: Mesh, upstream_factory) -> None:
    upstream = upstream_factory(users={"app": "pw"})
    (dead_port,) = free_ports(1)  # nothing listens there: every attempt defers
    queue = ("--queue", f"sqlite:///{mesh.workdir}/queue.db", "--queue-retry-delay", "1", "--queue-max-retry-delay", "1")
    gateway = mesh.gateway("gw-1", index=1, extra_args=queue)
    mesh.operator()
    for name in ("queued", "quiet"):
        mesh.secret(f"{name}-smtp", {"username": "app", "password": "pw"})
    down = {"host": "127.0.0.1", "port": dead_port, "tls": "none"}
    mesh.apply_account("queued", upstream, server=down, delivery={"mode": "queue"})
    mesh.apply_account("quiet", upstream)
    mesh.wait_condition("queued", "Synced", "True")
    mesh.wait_condition("quiet", "Ready", "True")
    key = f"{mesh.namespace}/queued"

    answer = gateway.post(key)
    assert answer.status == 202, answer.body
    shown = eventually(lambda: _with(delivery(mesh, "queued"), deferred=1), "deferred: 1 in the status", COUNTED)
    assert shown["queued"] == 0 and shown["oldestMessageTime"].endswith("Z"), shown
    assert upstream.messages == []

    mesh.patch_account("queued", {"server": {"port": upstream.port}})  # the upstream is fixed
    eventually(lambda: len(upstream.messages) == 1, "the message to be delivered", 30)
    drained = eventually(lambda: _with(delivery(mesh, "queued"), deferred=0, sending=0), "zeros in the status", COUNTED)
    assert drained == {"queued": 0, "deferred": 0, "sending": 0}, drained  # no oldest message any more

    assert delivery(mesh, "quiet") is None  # never queued: never written
    assert gateway.account(f"{mesh.namespace}/quiet")["queue"] == {  # type: ignore[index]
        "queued": 0,
        "deferred": 0,
        "sending": 0,
        "oldestCreatedAt": None,
    }


def _with(block: dict[str, Any] | None, **counts: int) -> dict[str, Any] | None:
    if block is not None and all(block.get(name) == value for name, value in counts.items()):
        return block
    return None
