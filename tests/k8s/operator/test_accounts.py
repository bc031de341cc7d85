"""SmtpAccounts applied with kubectl reach every gateway, live: real apiserver, gateways, upstreams, operator."""

from __future__ import annotations

from tests.k8s.operator.harness import Mesh


def test_apply_account_and_secret_then_send_through_every_gateway(mesh: Mesh, upstream_factory) -> None:
    upstream = upstream_factory(users={"app": "s3cret"})
    gateways = [mesh.gateway(f"gw-{index}", index=index) for index in (1, 2, 3)]
    operator = mesh.operator()
    mesh.cp.create_secret(mesh.namespace, "billing-smtp", {"username": "app", "password": "s3cret"})  # kubectl apply
    mesh.cp.apply(
        mesh.account_body("billing", upstream, pool={"maxConnections": 2}, rateLimit={"messagesPerMinute": 600})
    )
    key = f"{mesh.namespace}/billing"

    ready = mesh.wait_condition("billing", "Ready", "True")
    assert ready["reason"] == "Ready"
    status = (mesh.account("billing") or {})["status"]
    assert status["gateways"] == {"synced": 3, "total": 3}
    assert status["effective"] == {"maxConnectionsPerGateway": [1, 1, 0], "messagesPerMinutePerGateway": [300, 300, 0]}
    assert status["observedGeneration"] == 1

    for index, gateway in enumerate(gateways):  # gw-3 holds no share: it forwards to gw-1 or gw-2
        code, body = gateway.send(key, subject=f"via {gateway.name}")
        assert code == 200, body
        upstream.wait_messages(index + 1)
    assert sorted(m.data.split(b"Subject: ")[1].split(b"\r\n")[0] for m in upstream.messages) == [
        b"via gw-1", b"via gw-2", b"via gw-3",
    ]  # fmt: skip
    assert {login[1] for login in upstream.counters.logins} == {"app"}

    reports = [gateway.account(key) for gateway in gateways]
    assert [r["pool"]["maxConnections"] if r["pool"] else 0 for r in reports] == [1, 1, 0]  # type: ignore[index]
    assert reports[2]["forwardTo"]  # type: ignore[index]
    mesh.wait_condition("billing", "UpstreamHealthy", "True")
    printed = mesh.cp.kubectl("get", "smtpacct", "billing", "-n", mesh.namespace).stdout
    assert printed.split("\n")[1].split()[1:5] == ["127.0.0.1", "True", "True", "True"]
    assert operator.metric("mailgate_operator_reconciles_total") >= 1
    assert operator.metric("mailgate_operator_push_duration_seconds_count") >= 3
    assert "s3cret" not in operator.log


def test_spec_changes_reach_every_gateway_without_restarts(mesh: Mesh, upstream_factory) -> None:
    upstream = upstream_factory(users={"app": "pw"})
    gateways = [mesh.gateway(f"gw-{index}", index=index) for index in (1, 2)]
    pids = [gateway.proc.pid for gateway in gateways]  # type: ignore[union-attr]
    mesh.operator()
    mesh.secret("bulk-smtp", {"username": "app", "password": "pw"})
    mesh.apply_account("bulk", upstream, pool={"maxConnections": 2, "ttlSeconds": 300})
    key = f"{mesh.namespace}/bulk"
    mesh.wait_condition("bulk", "Synced", "True")

    mesh.patch_account("bulk", {"pool": {"maxConnections": 6, "ttlSeconds": 42}, "rateLimit": {"messagesPerMinute": 90}})
    mesh.wait_served(
        key,
        lambda r: r["generation"] == 2 and r["pool"]["maxConnections"] == 3 and r["rateLimit"]["messagesPerMinute"] == 45,
        "maxConnections 6 and 90/min split over two gateways",
    )
    mesh.wait_condition("bulk", "Synced", "True", generation=2)
    assert (mesh.account("bulk") or {})["status"]["effective"]["maxConnectionsPerGateway"] == [3, 3]
    assert [gateway.proc.pid for gateway in gateways] == pids  # type: ignore[union-attr]
    for gateway in gateways:
        code, body = gateway.send(key)
        assert code == 200, body
    upstream.wait_messages(2)


def test_status_and_metadata_changes_trigger_nothing(mesh: Mesh, upstream_factory) -> None:
    upstream = upstream_factory(users={"app": "pw"})
    gateway = mesh.gateway("gw-1", index=1)
    operator = mesh.operator()
    mesh.secret("quiet-smtp", {"username": "app", "password": "pw"})
    mesh.apply_account("quiet", upstream)
    mesh.wait_condition("quiet", "Ready", "True")
    reconciles = operator.metric("mailgate_operator_reconciles_total")
    pushes = operator.metric("mailgate_operator_push_duration_seconds_count")

    mesh.patch_account("quiet", {"metadata": {"labels": {"team": "billing"}}})
    mesh.cp.request(
        "PATCH",
        f"/apis/mailgate.dev/v1alpha1/namespaces/{mesh.namespace}/smtpaccounts/quiet/status",
        {"status": {"gateways": {"synced": 0, "total": 9}}},
    )
    mesh.patch_account("quiet", {"suspend": True})  # the one real change, processed after the two above
    mesh.wait_condition("quiet", "Ready", "False", "Suspended", generation=2)
    assert operator.metric("mailgate_operator_reconciles_total") == reconciles + 1
    assert operator.metric("mailgate_operator_push_duration_seconds_count") == pushes + 1
    assert (gateway.account(f"{mesh.namespace}/quiet") or {})["suspended"] is True
