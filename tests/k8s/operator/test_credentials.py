"""Credentials from Secrets: rotation under load, and broken Secrets that leave the last good config in place."""

from __future__ import annotations

import threading
import time

from tests.k8s.operator.harness import Mesh, eventually


def test_rotating_the_secret_while_clients_send_fails_no_request(mesh: Mesh, upstream_factory) -> None:
    upstream = upstream_factory(users={"app-v1": "old-password", "app-v2": "new-password"})
    gateways = [mesh.gateway(f"gw-{index}", index=index) for index in (1, 2)]
    mesh.operator()
    mesh.secret("rota-smtp", {"username": "app-v1", "password": "old-password"})
    mesh.apply_account("rota", upstream, pool={"maxConnections": 2})
    key = f"{mesh.namespace}/rota"
    mesh.wait_condition("rota", "Ready", "True")
    before = {gateway.name: (gateway.account(key) or {})["digest"] for gateway in gateways}

    results: list[int] = []
    stop = threading.Event()

    def client(gateway) -> None:  # bounded: at most 300 requests and 60 s per client
        deadline = time.monotonic() + 60
        for _ in range(300):
            if stop.is_set() or time.monotonic() > deadline:
                return
            code, _ = gateway.send(key)
            results.append(code)

    threads = [threading.Thread(target=client, args=(gateway,)) for gateway in gateways for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        upstream.wait_messages(10)
        mesh.secret("rota-smtp", {"username": "app-v2", "password": "new-password"})
        mesh.wait_served(key, lambda report: report["digest"] not in before.values(), "the rotated credentials everywhere")
        eventually(lambda: any(login[1] == "app-v2" for login in upstream.counters.logins), "a login with the new password")
        sent_after_rotation = len(upstream.messages)
        upstream.wait_messages(sent_after_rotation + 10)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert results and set(results) == {200}, f"{len(results)} requests, statuses {sorted(set(results))}"
    assert any(user == "app-v2" and secret == "new-password" for _, user, secret in upstream.counters.logins)
    assert mesh.condition("rota", "Ready")["status"] == "True"  # type: ignore[index]


def test_a_missing_secret_or_key_is_reported_and_the_old_config_still_served(mesh: Mesh, upstream_factory) -> None:
    upstream = upstream_factory(users={"app": "pw"})
    gateway = mesh.gateway("gw-1", index=1)
    operator = mesh.operator()
    mesh.secret("fragile-smtp", {"username": "app", "password": "pw"})
    mesh.apply_account("fragile", upstream)
    key = f"{mesh.namespace}/fragile"
    mesh.wait_condition("fragile", "Ready", "True")
    served = (gateway.account(key) or {})["digest"]

    mesh.delete("secrets", "fragile-smtp")
    condition = mesh.wait_condition("fragile", "CredentialsResolved", "False", "SecretNotFound")
    assert f"Secret {mesh.namespace}/fragile-smtp not found" in condition["message"]
    assert mesh.condition("fragile", "Ready")["reason"] == "CredentialsNotResolved"  # type: ignore[index]
    eventually(lambda: any(e["reason"] == "SecretNotFound" and e["type"] == "Warning" for e in mesh.events("fragile")),
               "a Warning Event")  # fmt: skip
    assert (gateway.account(key) or {})["digest"] == served
    code, body = gateway.send(key)
    assert code == 200, body

    mesh.secret("fragile-smtp", {"username": "app", "pasword": "pw"})  # a typo in the key
    condition = mesh.wait_condition("fragile", "CredentialsResolved", "False", "KeyMissing")
    assert "has no key 'password'" in condition["message"]
    assert (gateway.account(key) or {})["digest"] == served
    code, body = gateway.send(key)
    assert code == 200, body
    upstream.wait_messages(2)

    mesh.delete("secrets", "fragile-smtp")
    mesh.secret("fragile-smtp", {"username": "app", "password": "pw"})
    mesh.wait_condition("fragile", "Ready", "True")
    events = mesh.events("fragile")
    assert not any("pw" in (e.get("message") or "").split() for e in events)
    assert "pw'" not in operator.log and "password=" not in operator.log


def test_an_account_whose_secret_never_existed_is_not_pushed(mesh: Mesh, upstream_factory) -> None:
    upstream = upstream_factory()
    gateway = mesh.gateway("gw-1", index=1)
    mesh.operator()
    mesh.apply_account("orphan", upstream)
    mesh.wait_condition("orphan", "CredentialsResolved", "False", "SecretNotFound")
    synced = mesh.wait_condition("orphan", "Synced", "False", "NotPushed")
    assert synced["observedGeneration"] == 1
    code, _ = gateway.send(f"{mesh.namespace}/orphan")
    assert code == 404
    mesh.secret("orphan-smtp", {"username": "app", "password": "pw"})
    mesh.wait_condition("orphan", "Synced", "True")
    assert gateway.account(f"{mesh.namespace}/orphan") is not None


def test_an_upstream_refusing_the_login_turns_upstream_healthy_false(mesh: Mesh, upstream_factory) -> None:
    upstream = upstream_factory(users={"app": "the-right-one"})
    gateway = mesh.gateway("gw-1", index=1)
    mesh.operator()
    mesh.secret("locked-smtp", {"username": "app", "password": "a-wrong-one"})
    mesh.apply_account("locked", upstream)
    mesh.wait_condition("locked", "Synced", "True")
    assert mesh.condition("locked", "UpstreamHealthy")["reason"] == "NotChecked"  # type: ignore[index]
    code, body = gateway.send(f"{mesh.namespace}/locked")
    assert code in (502, 503), body
    condition = mesh.wait_condition("locked", "UpstreamHealthy", "False", "UpstreamError")
    assert condition["message"].startswith("1 gateway(s) report errors; gw-1: ")
    assert "a-wrong-one" not in condition["message"]
    assert mesh.condition("locked", "Ready")["reason"] == "UpstreamUnhealthy"  # type: ignore[index]
