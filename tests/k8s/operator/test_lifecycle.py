"""Deletion with a finalizer, operator restarts and two operator replicas."""

from __future__ import annotations

from tests.k8s.operator.harness import Mesh, eventually

LEASE = "mailgate-operator"


def test_deleting_an_account_removes_it_everywhere_before_the_finalizer_goes(mesh: Mesh, upstream_factory) -> None:
    upstream = upstream_factory(users={"app": "pw"})
    gateways = [mesh.gateway(f"gw-{index}", index=index) for index in (1, 2)]
    mesh.operator()
    mesh.secret("gone-smtp", {"username": "app", "password": "pw"})
    mesh.apply_account("gone", upstream)
    key = f"{mesh.namespace}/gone"
    mesh.wait_condition("gone", "Ready", "True")
    assert "mailgate.dev/operator" in (mesh.account("gone") or {})["metadata"]["finalizers"]

    unreachable = gateways[1]
    unreachable.stop()  # its Pod stays Ready: the operator cannot know it is gone, so it must wait
    mesh.delete("smtpaccounts", "gone")
    eventually(lambda: gateways[0].account(key) is None, "gw-1 to drop the account")
    code, _ = gateways[0].send(key)
    assert code == 404
    held = mesh.account("gone")
    assert held is not None and held["metadata"].get("deletionTimestamp"), "the finalizer must hold while gw-2 may serve it"

    mesh.remove_gateway("gw-2")  # the pod goes away: nothing serves the account any more
    eventually(lambda: mesh.account("gone") is None, "the finalizer to be released", timeout=30)


def test_a_restarted_operator_reconverges_without_pushing_what_is_unchanged(mesh: Mesh, upstream_factory) -> None:
    upstream = upstream_factory(users={"app": "pw"})
    gateways = [mesh.gateway(f"gw-{index}", index=index) for index in (1, 2)]
    first = mesh.operator()
    for name in ("steady", "edited"):
        mesh.secret(f"{name}-smtp", {"username": "app", "password": "pw"})
        mesh.apply_account(name, upstream, pool={"maxConnections": 2})
    for name in ("steady", "edited"):
        mesh.wait_condition(name, "Ready", "True")
    assert first.stop() == 0

    mesh.patch_account("edited", {"pool": {"maxConnections": 4, "ttlSeconds": 77}})  # while no operator runs
    mesh.secret("late-smtp", {"username": "app", "password": "pw"})
    mesh.apply_account("late", upstream)
    second = mesh.operator()
    mesh.wait_condition("edited", "Synced", "True", generation=2)
    mesh.wait_condition("late", "Ready", "True")
    mesh.wait_served(f"{mesh.namespace}/edited", lambda r: r["pool"]["maxConnections"] == 2, "the new split [2, 2]")
    assert second.metric("mailgate_operator_push_duration_seconds_count", kind="full") == 0
    # edited and late, on both gateways (edited may go twice while the new operator's plan settles); steady never.
    assert second.metric("mailgate_operator_push_duration_seconds_count", kind="account") >= 4
    for gateway in gateways:
        pushes = gateway.log_path.read_text(errors="replace")
        assert pushes.count(f"PUT /v1/config/accounts/{mesh.namespace}/steady ") == 1, "only the first operator pushes it"
        assert pushes.count(f"PUT /v1/config/accounts/{mesh.namespace}/late ") >= 1
    for gateway in gateways:
        for name in ("steady", "edited", "late"):
            code, body = gateway.send(f"{mesh.namespace}/{name}")
            assert code == 200, body


def test_two_replicas_elect_one_active_and_hand_over(mesh: Mesh, upstream_factory) -> None:
    upstream = upstream_factory(users={"app": "pw"})
    gateway = mesh.gateway("gw-1", index=1)
    replicas = [mesh.operator("--peering", LEASE, namespaces=()) for _ in range(2)]  # cluster-wide, both
    leaders = eventually(
        lambda: [op for op in replicas if op.metric("mailgate_operator_leader") == 1] or None, "a leader"
    )
    assert len(leaders) == 1
    active = leaders[0]
    standby = next(op for op in replicas if op is not active)

    mesh.secret("duo-smtp", {"username": "app", "password": "pw"})
    mesh.apply_account("duo", upstream)
    mesh.wait_condition("duo", "Ready", "True")
    assert standby.metric("mailgate_operator_leader") == 0
    assert standby.metric("mailgate_operator_reconciles_total") == 0
    assert standby.metric("mailgate_operator_push_duration_seconds_count") == 0
    lease = mesh.cp.get("lease", LEASE, mesh.gateway_namespace)
    assert lease is not None and lease["spec"]["holderIdentity"]

    assert active.stop() == 0  # a clean shutdown hands the Lease back
    eventually(lambda: standby.metric("mailgate_operator_leader") == 1, "the standby to take over", timeout=30)
    mesh.patch_account("duo", {"pool": {"maxConnections": 5}})
    mesh.wait_condition("duo", "Synced", "True", generation=2)
    eventually(lambda: (gateway.account(f"{mesh.namespace}/duo") or {})["pool"]["maxConnections"] == 5, "the new limit")
    assert standby.metric("mailgate_operator_reconciles_total") >= 1
